"""Supervised pretraining on all base classes (``fewshot pretrain``): the Baseline / Baseline++ / RFS recipe.

The backbone and a classifier over every training class (linear, or cosine with a fixed scale as in
Baseline++) are trained with cross-entropy on shuffled batches, optionally with label smoothing, mixup or
cutmix and the ``data.augment`` augmentation; SGD or Adam with linear warm-up and cosine decay per step.
After every epoch the backbone is validated episodically on the val split with the configured head.

It shares ``fewshot train``'s run lifecycle (:mod:`fewshot.training.lifecycle`): the same run directory, atomic
checkpoints, SIGTERM handling, exact ``--resume`` (batch ``g`` of the run is a fixed function of the
seed, so a resumed run draws the same batches, augmentations and mixes) and torchrun data parallelism
(rank ``r`` of ``N`` takes batches ``s*N + r``). Its checkpoints hold a complete few-shot model (backbone
+ head) and the classifier, so ``fewshot eval RUN_DIR`` works directly, and ``model.weights:
RUN_DIR/checkpoints/best.pt`` starts episodic training from the pretrained backbone.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from episodes import FewShotSplit, train_augmentation

from ..config import Config
from ..errors import FewshotError
from ..evaluation.data import open_phase, phase_spec
from ..model.network import build_model
from ..runtime import autocast, seed_everything
from .distributed import DistContext, data_parallel
from .lifecycle import Job, begin, launch, run_steps
from .optim import Schedule, build_optimizer, build_scheduler
from .run_directory import RunDirectory
from .validation import validation

MUST_MATCH = ("model.backbone", "model.head", "model.backbone_options", "data.image_size", "data.channels",
              "pretrain.batch_size", "pretrain.classifier")


class CosineClassifier(nn.Module):
    """Baseline++: logits are ``scale`` times the cosine between embedding and class weight."""

    def __init__(self, dim: int, classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


class Supervised(nn.Module):
    """Backbone and classifier as one module, for DistributedDataParallel: images -> logits ``(B, classes)``."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone, self.classifier = backbone, classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(images))


def global_batch(step: int, world: int, rank: int, per_step: int, per_epoch: int) -> int:
    """The global batch rank ``rank`` of ``world`` trains on at ``step``: steps ``e*per_step ..`` are epoch ``e``,
    whose batches ``0 .. per_step*world - 1`` are dealt out ``world`` per step (the remainder of an epoch that
    ``world`` does not divide is skipped, so a step's epoch label is the epoch of its data)."""
    epoch, within = divmod(step, per_step)
    return epoch * per_epoch + within * world + rank


class ShuffledBatches(Dataset):
    """Item ``g`` is global batch ``g`` of the run: ``(images (B, C, H, W) uint8, labels (B,))``.

    Epoch ``e`` visits every image once in an order drawn from ``(seed, e)``; the last incomplete batch
    of an epoch is dropped. Augmentation draws are seeded by ``(seed, g)``, so a batch is the same
    whichever process, worker or resume asks for it.
    """

    def __init__(self, split: FewShotSplit, batch_size: int, seed: int, transform=None):
        self.split, self.batch_size, self.seed, self.transform = split, batch_size, seed, transform
        self.items = np.array([(c, p) for c, size in enumerate(split.class_sizes) for p in range(size)])
        self.per_epoch = len(self.items) // batch_size

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))

    def __len__(self) -> int:  # batches of one epoch
        return self.per_epoch

    def __getitem__(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position = divmod(int(batch), self.per_epoch)
        chosen = self.items[self.order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]]
        images = torch.stack([self.split.images(int(c), [int(p)])[0] for c, p in chosen])
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.default_rng([self.seed, int(batch), 1]).integers(2**62)))
                images = torch.stack([self.transform(image) for image in images])
        return images, torch.from_numpy(chosen[:, 0].copy())


def mix_batch(images: torch.Tensor, labels: torch.Tensor, classes: int, mixup: float, cutmix: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one chosen at random when both are on) with soft targets ``(B, classes)``."""
    targets = F.one_hot(labels, classes).float()
    choices = [name for name, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not choices:
        return images, targets
    name = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    alpha = mixup if name == "mixup" else cutmix
    lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator))).beta(alpha, alpha))
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


def pretrain(config: Config, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Pretrain as ``config.pretrain`` says, writing into ``run_dir``; return the summary dict."""
    return launch(_pretrain, config, run_dir, resume, progress, log)


def base_batches(config: Config, context: DistContext, progress: bool) -> tuple[Any, "ShuffledBatches", int]:
    """(the base classes' split, its shuffled batches, steps per epoch for this many processes)."""
    pcfg = config.pretrain
    base = open_phase(config, phase_spec(config.data, "train"), 2, 1, 0, progress)
    batches = ShuffledBatches(base, pcfg.batch_size, config.seed,
                              train_augmentation(config.data.augment, config.data.image_size, config.data.channels))
    per_step = batches.per_epoch // context.world_size
    if per_step == 0:
        raise FewshotError(f"pretrain.batch_size={pcfg.batch_size} is too large: {len(batches.items)} training "
                           f"images make no full batch{' per process' if context.enabled else ''}; lower it")
    return base, batches, per_step


def _pretrain(config: Config, run: RunDirectory, progress: bool, log: Callable[[str], None], context: DistContext,
              device: torch.device) -> dict:
    pcfg = config.pretrain
    seed_everything(config.seed)
    model = build_model(config.model, config.data.channels, config.data.image_size).to(device)
    if model.head.adapts_backbone:
        raise FewshotError(f"pretrain validates with the configured head, which must classify embeddings; "
                           f"'{config.model.head}' adapts the network per episode: pretrain with another head "
                           "(model.head), then evaluate with this one")
    run.check(model)
    base, batches, per_step = base_batches(config, context, progress)
    total = pcfg.epochs * per_step
    saved = run.resume_point(config, MUST_MATCH, "pretrain.epochs", total, log, "batche",
                             world_size=context.world_size) if run.resume else None
    validate = validation(model, config, pcfg.val_episodes, context, device, progress, run)
    classes = len(base)
    dim = model.head.embedding_dim
    classifier = (CosineClassifier(dim, classes, pcfg.cosine_scale) if pcfg.classifier == "cosine"
                  else nn.Linear(dim, classes)).to(device)
    net = data_parallel(Supervised(model.backbone, classifier), context, device)

    def forward(batch: tuple[int, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        index, images, labels = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mixer = torch.Generator().manual_seed(int(np.random.default_rng([config.seed, index, 2]).integers(2**62)))
        inputs, targets = mix_batch(model.prepare(images), labels, classes, pcfg.mixup, pcfg.cutmix, mixer)
        with autocast(device, config.train.amp):
            logits = net(inputs).float()
        loss = F.cross_entropy(logits, targets, label_smoothing=pcfg.label_smoothing)
        return loss, int((logits.argmax(1) == labels).sum()), len(labels)

    epoch_of = lambda step: math.ceil(step / per_step)  # noqa: E731 - epochs finished after `step` steps
    parameters = list(model.backbone.parameters()) + list(classifier.parameters())
    optimizer = build_optimizer(pcfg.optimizer, parameters, pcfg.lr, pcfg.momentum, pcfg.weight_decay)
    schedule = Schedule("cosine", total, pcfg.warmup_epochs * per_step)
    job = Job(config, {"model": model, "classifier": classifier}, optimizer, build_scheduler(optimizer, schedule),
              forward, where=lambda batch: f"batch {batch[0]}, epoch {epoch_of(state.step + 1)}", total=total,
              log_every=per_step, val_every=per_step, validate=validate, unit="batch",
              checkpoint_every=per_step, checkpoint_minutes=config.train.checkpoint_minutes,
              label=lambda step: f"epoch {epoch_of(step)}", record=lambda step: {"epoch": epoch_of(step)},
              extra={"stage": "pretrain"})
    state = begin(job, run, saved, context, device, log)
    world, rank = context.world_size, context.rank
    steps = range(state.step, total)
    chosen = [global_batch(s, world, rank, per_step, batches.per_epoch) for s in steps]
    loader = DataLoader(batches, batch_size=None, num_workers=config.data.workers, sampler=chosen,
                        generator=torch.Generator().manual_seed(config.seed))
    indexed = ((g, images, labels) for g, (images, labels) in zip(chosen, loader))
    outcome = run_steps(job, indexed, run, state, context, device, progress)
    best = state.best if state.best["accuracy"] >= 0 else None
    summary = {"epochs": epoch_of(state.step), "steps": state.step, "minutes": state.seconds() / 60,
               "classes": classes, "best_validation": best, "stopped_early": outcome["stopped_early"],
               "interrupted": outcome["interrupted"], "device": str(device), "world_size": world,
               "run_dir": str(run.path)}
    if not outcome["interrupted"]:
        run.finish(summary)
    return summary
