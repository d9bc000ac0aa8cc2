"""Episodic meta-training (``fewshot train``).

The run directory holds ``config.yaml`` (the full resolved config), ``metrics.jsonl`` (one JSON line
per log interval and per validation, appended and flushed), ``checkpoints/last.pt`` and
``checkpoints/best.pt`` (written atomically), ``curves.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from episodes import EpisodeDataset, EpisodeSampler, train_augmentation

from .atomic import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, config_from_dict, dump_config
from .data import open_phase, phase_spec
from .errors import FewshotError
from .evaluate import evaluate
from .model import build_model
from .plots import plot_training_curves
from .runtime import autocast, resolve_device, seed_everything

VAL_SEED_OFFSET = 1_000_003  # validation episodes are a fixed set, distinct from the training stream
MUST_MATCH = ("model.backbone", "model.head", "model.backbone_options", "model.head_options", "data.image_size",
              "data.channels")


def lr_factor(config: Config, episode: int) -> float:
    """Learning-rate multiplier after ``episode`` episodes: linear warm-up, then step or cosine decay."""
    train = config.train
    if train.warmup and episode < train.warmup:
        return (episode + 1) / train.warmup
    if train.schedule == "step":
        return train.gamma ** (episode // train.step_size)
    if train.schedule == "cosine":
        progress = (episode - train.warmup) / max(1, train.episodes - train.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_optimizer(config: Config, parameters) -> torch.optim.Optimizer:
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                               nesterov=train.momentum > 0)
    return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)


def _get(config_dict: dict, dotted: str):
    node = config_dict
    for part in dotted.split("."):
        node = node[part]
    return node


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        full = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and not full.endswith("_options"):
            keys += config_differences(a, b, full + ".")
        elif a != b:
            keys.append(full)
    return keys


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Before any work: the run directory can be written, and holds no other run unless resuming."""
    has_checkpoint = (run_dir / "checkpoints" / "last.pt").exists()
    if resume and not has_checkpoint:
        raise FewshotError(f"--resume: {run_dir} has no checkpoints/last.pt to resume from")
    if not resume and has_checkpoint:
        raise FewshotError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise FewshotError(f"run directory {run_dir} cannot be created or written ({existing} is not a writable "
                           "folder): choose another --out")


def create_run_dir(run_dir: Path) -> None:
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FewshotError(f"cannot create run directory {run_dir}: {exc.strerror}") from None


class MetricsLog:
    """Append-only JSON-lines log; each line is flushed and synced when written."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def train(config: Config, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Meta-train as ``config`` says, writing into ``run_dir``; return the summary dict."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    device = resolve_device(config.train.device)
    seed_everything(config.seed)
    tcfg, ecfg = config.train, config.eval
    model = build_model(config.model, config.data.channels, config.data.image_size).to(device)

    train_split = open_phase(config, phase_spec(config.data, "train"), tcfg.ways, tcfg.shots, tcfg.queries, progress)
    val_spec = phase_spec(config.data, "val", required=False)
    val_split = open_phase(config, val_spec, ecfg.ways, ecfg.shots, ecfg.queries, progress) if val_spec else None
    optimizer = make_optimizer(config, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda episode: lr_factor(config, episode))
    start, best, stale = 0, {"accuracy": -1.0, "ci95": 0.0, "episode": 0}, 0

    if resume:
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        changed = config_differences(state["config"], config.to_dict())
        fatal = [key for key in changed if any(key == m or key.startswith(m + ".") for m in MUST_MATCH)]
        if fatal:
            key = fatal[0]
            raise FewshotError(f"cannot resume {run_dir}: {key} changed from {_get(state['config'], key)!r} to "
                               f"{_get(config.to_dict(), key)!r}; start a new run (another --out) instead")
        if changed:
            log(f"resuming with changed settings: {', '.join(changed)}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, stale = state["episode"], state["best"], state.get("stale", 0)
        torch.set_rng_state(state["rng"]["torch"])
        log(f"resumed {run_dir} at episode {start}")
    create_run_dir(run_dir)
    atomic_write_text(run_dir / "config.yaml", dump_config(config))

    sampler = EpisodeSampler(train_split.class_sizes, tcfg.ways, tcfg.shots, tcfg.queries, config.seed)
    augment = train_augmentation(config.data.augment, config.data.image_size, config.data.channels)
    dataset = EpisodeDataset(train_split, sampler, max(0, tcfg.episodes - start), augment, start=start)
    loader = DataLoader(dataset, batch_size=None, num_workers=config.data.workers,
                        persistent_workers=False, pin_memory=device.type == "cuda")
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    checkpoints = run_dir / "checkpoints"

    def checkpoint_state(episode: int) -> dict:
        return {"config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "episode": episode, "best": best, "stale": stale,
                "rng": {"torch": torch.get_rng_state()}}

    model.train()
    window_loss = window_correct = window_total = 0.0
    window_count = 0
    started = time.perf_counter()
    stopped_early = False
    episode_number = start
    bar = tqdm(total=tcfg.episodes, initial=start, desc="training", unit="episode",
               disable=None if progress else True)
    try:
        for episode in loader:
            episode = episode.to(device, non_blocking=True)
            with autocast(device, tcfg.amp):
                logits = model(episode.support, episode.support_labels, episode.query, episode.ways)
                loss = model.head.loss(logits.float(), episode.query_labels)
            if not torch.isfinite(loss):
                last = checkpoints / "last.pt"
                kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
                raise FewshotError(f"loss became {loss.item()} at episode {episode.index}; {kept}; "
                                   "lower train.lr or set train.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            scheduler.step()
            episode_number = episode.index + 1

            window_loss += loss.item()
            window_correct += (logits.argmax(1) == episode.query_labels).sum().item()
            window_total += len(episode.query_labels)
            window_count += 1
            bar.update(1)
            if window_count == tcfg.log_every or episode_number == tcfg.episodes:
                record = {"kind": "train", "episode": episode_number, "loss": window_loss / window_count,
                          "accuracy": 100.0 * window_correct / window_total, "lr": optimizer.param_groups[0]["lr"],
                          "seconds": time.perf_counter() - started}
                metrics.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.1f}",
                                lr=f"{record['lr']:.2g}")
                window_loss = window_correct = window_total = 0.0
                window_count = 0

            validate_now = val_split is not None and tcfg.val_every and (
                episode_number % tcfg.val_every == 0 or episode_number == tcfg.episodes)
            if validate_now:
                result = evaluate(model, val_split, ecfg.ways, ecfg.shots, ecfg.queries, tcfg.val_episodes,
                                  seed=config.seed + VAL_SEED_OFFSET, device=device, batch_size=ecfg.batch_size,
                                  progress=False, amp=tcfg.amp)
                metrics.write({"kind": "val", "episode": episode_number, "accuracy": result.accuracy,
                               "ci95": result.ci95})
                bar.write(f"episode {episode_number}: validation {result.summary()}")
                if result.accuracy > best["accuracy"]:
                    best, stale = {"accuracy": result.accuracy, "ci95": result.ci95, "episode": episode_number}, 0
                    save_checkpoint(checkpoints / "best.pt", checkpoint_state(episode_number))
                else:
                    stale += 1
                save_checkpoint(checkpoints / "last.pt", checkpoint_state(episode_number))
                if tcfg.patience and stale >= tcfg.patience:
                    bar.write(f"stopping early: no validation improvement in {stale} validations")
                    stopped_early = True
                    break
    finally:
        bar.close()
        metrics.close()

    save_checkpoint(checkpoints / "last.pt", checkpoint_state(episode_number))
    if best["accuracy"] < 0:  # never validated: the final weights are the best we know
        save_checkpoint(checkpoints / "best.pt", checkpoint_state(episode_number))
    plot_training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
    summary = {"episodes": episode_number, "minutes": (time.perf_counter() - started) / 60,
               "best_validation": best if best["accuracy"] >= 0 else None, "stopped_early": stopped_early,
               "device": str(device), "run_dir": str(run_dir)}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def default_run_dir(config_path: str | None) -> Path:
    """``runs/<config name>-<date>-<time>``."""
    name = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = ["train", "lr_factor", "default_run_dir", "config_from_dict"]
