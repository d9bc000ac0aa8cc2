"""Supervised pretraining on all base classes (``fewshot pretrain``): the Baseline / Baseline++ / RFS recipe.

The backbone and a classifier over every training class (linear, or cosine with a fixed scale as in
Baseline++) are trained with cross-entropy on ordinary shuffled batches, optionally with label smoothing,
mixup or cutmix and the ``data.augment`` augmentation; SGD or Adam with linear warm-up and cosine decay
per step. After every epoch the backbone is validated episodically on the val split with the configured
head. The run directory matches ``fewshot train``'s, and its checkpoints hold a complete few-shot model
(backbone + head), so ``fewshot eval RUN_DIR`` works directly, and ``model.weights: RUN_DIR/checkpoints/best.pt``
starts episodic training from the pretrained backbone.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from episodes import LabelledImages, train_augmentation

from .atomic import atomic_write_text
from .checkpoint import save_checkpoint
from .config import Config, dump_config
from .data import open_phase, phase_spec
from .errors import FewshotError
from .evaluate import evaluate
from .model import build_model
from .plots import plot_training_curves
from .runtime import autocast, resolve_device, seed_everything
from .train import VAL_SEED_OFFSET, MetricsLog, check_free_space, check_run_dir


class CosineClassifier(nn.Module):
    """Baseline++: logits are ``scale`` times the cosine between embedding and class weight."""

    def __init__(self, dim: int, classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def mix_batch(images: torch.Tensor, labels: torch.Tensor, classes: int, mixup: float, cutmix: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one chosen at random when both are on) with soft targets ``(B, classes)``."""
    targets = F.one_hot(labels, classes).float()
    choices = [name for name, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not choices:
        return images, targets
    name = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    alpha = mixup if name == "mixup" else cutmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(images), generator=generator).to(images.device)
    if name == "mixup":
        mixed = lam * images + (1 - lam) * images[order]
    else:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        top = int(torch.randint(height - cut_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - cut_w + 1, (1,), generator=generator))
        mixed = images.clone()
        mixed[..., top:top + cut_h, left:left + cut_w] = images[order][..., top:top + cut_h, left:left + cut_w]
        lam = 1 - (cut_h * cut_w) / (height * width)
    return mixed, lam * targets + (1 - lam) * targets[order.to(targets.device)]


def pretrain(config: Config, run_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Pretrain as ``config.pretrain`` says, writing into ``run_dir``; return the summary dict."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=False)
    pcfg, ecfg = config.pretrain, config.eval
    device = resolve_device(config.train.device)
    seed_everything(config.seed)
    model = build_model(config.model, config.data.channels, config.data.image_size).to(device)
    if model.head.adapts_backbone:
        raise FewshotError("pretrain needs a head that classifies embeddings for validation (protonet, "
                           "linear_probe, relation), not one that adapts the backbone")
    check_free_space(run_dir, model)
    base = open_phase(config, phase_spec(config.data, "train"), 2, 1, 0, progress)
    val_spec = phase_spec(config.data, "val", required=False)
    val_split = open_phase(config, val_spec, ecfg.ways, ecfg.shots, ecfg.queries, progress) if val_spec else None
    classes = len(base)
    dim = model.head.embedding_dim
    classifier = (CosineClassifier(dim, classes, pcfg.cosine_scale) if pcfg.classifier == "cosine"
                  else nn.Linear(dim, classes)).to(device)
    parameters = list(model.backbone.parameters()) + list(classifier.parameters())
    if pcfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=pcfg.lr, momentum=pcfg.momentum, weight_decay=pcfg.weight_decay,
                                    nesterov=True)
    else:
        optimizer = torch.optim.Adam(parameters, lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    augment = train_augmentation(config.data.augment, config.data.image_size, config.data.channels)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(LabelledImages(base, augment), batch_size=pcfg.batch_size, shuffle=True, drop_last=True,
                        generator=generator, num_workers=config.data.workers, pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise FewshotError(f"pretrain.batch_size={pcfg.batch_size} is larger than the {len(loader.dataset)} "
                           "training images")
    total_steps, warmup = pcfg.epochs * len(loader), pcfg.warmup_epochs * len(loader)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    mixer = torch.Generator().manual_seed(config.seed + 1)
    best = {"accuracy": -1.0, "ci95": 0.0, "episode": 0}
    started = time.perf_counter()

    def state(epoch: int) -> dict:
        return {"config": config.to_dict(), "model": model.state_dict(), "classifier": classifier.state_dict(),
                "episode": epoch, "best": best, "stage": "pretrain"}

    try:
        for epoch in range(1, pcfg.epochs + 1):
            model.train()
            classifier.train()
            totals = [0.0, 0.0, 0]
            bar = tqdm(loader, desc=f"pretrain epoch {epoch}/{pcfg.epochs}", unit="batch",
                       disable=None if progress else True, leave=False)
            for images, labels in bar:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                inputs, targets = mix_batch(model.prepare(images), labels, classes, pcfg.mixup, pcfg.cutmix, mixer)
                with autocast(device, config.train.amp):
                    logits = classifier(model.backbone(inputs)).float()
                loss = F.cross_entropy(logits, targets, label_smoothing=pcfg.label_smoothing)
                if not torch.isfinite(loss):
                    raise FewshotError(f"loss became {loss.item()} in pretraining epoch {epoch}; lower pretrain.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                totals[0] += loss.item() * len(labels)
                totals[1] += (logits.argmax(1) == labels).sum().item()
                totals[2] += len(labels)
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{100 * totals[1] / totals[2]:.1f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2g}")
            bar.close()
            metrics.write({"kind": "train", "episode": epoch, "loss": totals[0] / totals[2],
                           "accuracy": 100 * totals[1] / totals[2], "lr": optimizer.param_groups[0]["lr"],
                           "seconds": time.perf_counter() - started})
            line = (f"epoch {epoch}: loss {totals[0] / totals[2]:.3f}, train accuracy "
                    f"{100 * totals[1] / totals[2]:.1f} %")
            if val_split is not None:
                result = evaluate(model, val_split, ecfg.ways, ecfg.shots, ecfg.queries, pcfg.val_episodes,
                                  seed=config.seed + VAL_SEED_OFFSET, device=device, progress=False)
                metrics.write({"kind": "val", "episode": epoch, "accuracy": result.accuracy, "ci95": result.ci95})
                line += f"; validation {result.summary()}"
                if result.accuracy > best["accuracy"]:
                    best = {"accuracy": result.accuracy, "ci95": result.ci95, "episode": epoch}
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", state(epoch))
            log(line)
            save_checkpoint(run_dir / "checkpoints" / "last.pt", state(epoch))
    finally:
        metrics.close()
    if best["accuracy"] < 0:
        save_checkpoint(run_dir / "checkpoints" / "best.pt", state(pcfg.epochs))
    plot_training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    summary = {"epochs": pcfg.epochs, "minutes": (time.perf_counter() - started) / 60, "classes": classes,
               "best_validation": best if best["accuracy"] >= 0 else None, "run_dir": str(run_dir)}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
