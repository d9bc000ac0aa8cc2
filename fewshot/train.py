"""Episodic meta-training (``fewshot train``), fault-tolerant and data-parallel under torchrun.

The run directory holds ``config.yaml`` (the full resolved config), ``metrics.jsonl`` (one JSON line
per log interval and per validation, appended and synced), ``checkpoints/last.pt`` and
``checkpoints/best.pt`` (written atomically), ``curves.png`` and ``summary.json``.

Faults: SIGTERM / SIGINT finish the current step, save ``last.pt`` and return (exit 0); after a
SIGKILL, ``--resume`` continues from ``last.pt`` with the same episode stream, optimizer, scheduler,
random state and log window, so a CPU run killed and resumed ends with exactly the weights and metrics
of an uninterrupted one. A NaN or Inf loss stops the run before the weights are touched.

Data-parallel: under ``torchrun --nproc_per_node=N``, ``train.episodes`` counts optimizer steps and each
step uses N episodes, one per rank (rank ``r`` of ``N`` at step ``s`` takes episode ``s*N + r``);
DistributedDataParallel averages the gradients; rank 0 alone validates and writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from episodes import EpisodeDataset, EpisodeSampler, train_augmentation

from .atomic import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, dump_config
from .data import open_phase, phase_spec
from .distributed import DistContext, all_sum, any_rank, broadcast_flag, gather_objects, init_distributed, \
    parameter_spread, shutdown
from .errors import FewshotError
from .evaluate import evaluate
from .model import FewShotModel, build_model
from .plots import plot_training_curves
from .runtime import autocast, seed_everything

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
        node = node.get(part) if isinstance(node, dict) else None
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


def check_free_space(run_dir: Path, model: torch.nn.Module) -> None:
    """Fail before training when the disk cannot hold two checkpoints (weights + Adam state)."""
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    need = 2 * 3 * sum(p.numel() * p.element_size() for p in model.parameters()) + 16 * 2**20
    free = shutil.disk_usage(existing).free
    if free < need:
        raise FewshotError(f"only {free / 2**20:.0f} MB free on the disk of {run_dir}, checkpoints need about "
                           f"{need / 2**20:.0f} MB: free some space or choose another --out")


class MetricsLog:
    """Append-only JSON-lines log; each line is flushed and synced when written.

    On resume, records for episodes already logged are not written again (a resumed run recomputes
    them identically), and a line cut short by a kill is dropped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.logged: dict[str, int] = {}
        if path.exists():
            text = path.read_text()
            complete = text[: text.rfind("\n") + 1]
            if complete != text:
                path.write_text(complete)
            for line in complete.splitlines():
                record = json.loads(line)
                self.logged[record["kind"]] = max(self.logged.get(record["kind"], 0), record["episode"])
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if record["episode"] <= self.logged.get(record["kind"], -1):
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.signal: str | None = None
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class TrainingState:
    """Everything besides the weights that an exact resume needs: counters, best result, log window."""

    def __init__(self):
        self.step = 0
        self.best = {"accuracy": -1.0, "ci95": 0.0, "episode": 0}
        self.stale = 0
        self.window = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, queries, episodes
        self.earlier_seconds = 0.0  # training time of the processes before a resume
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Training time so far, across resumes."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def to_dict(self) -> dict:
        return {"episode": self.step, "best": self.best, "stale": self.stale, "window": self.window,
                "seconds": self.seconds()}

    def load(self, saved: dict) -> None:
        self.step, self.best, self.stale = saved["episode"], saved["best"], saved.get("stale", 0)
        self.window = saved.get("window", [0.0, 0.0, 0.0, 0.0])
        self.earlier_seconds = saved.get("seconds", 0.0)


def load_resume_point(run_dir: Path, config: Config, context: DistContext, log: Callable[[str], None]) -> dict:
    """``last.pt`` of the run, after checking that the config did not change in a way that matters."""
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    changed = config_differences(saved["config"], config.to_dict())
    fatal = [key for key in changed if any(key == m or key.startswith(m + ".") for m in MUST_MATCH)]
    if fatal:
        key = fatal[0]
        raise FewshotError(f"cannot resume {run_dir}: {key} changed from {_get(saved['config'], key)!r} to "
                           f"{_get(config.to_dict(), key)!r}; start a new run (another --out) instead")
    if changed and context.is_main:
        log(f"resuming with changed settings: {', '.join(changed)}")
    return saved


def train(config: Config, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Meta-train as ``config`` says, writing into ``run_dir``; return the summary dict."""
    context, device = init_distributed(config.train.device)
    try:
        return _train(config, Path(run_dir), resume, progress and context.is_main, log, context, device)
    finally:
        shutdown(context)


def _train(config: Config, run_dir: Path, resume: bool, progress: bool, log: Callable[[str], None],
           context: DistContext, device: torch.device) -> dict:
    from tqdm.auto import tqdm

    check_run_dir(run_dir, resume)
    seed_everything(config.seed)
    tcfg, ecfg = config.train, config.eval
    model = build_model(config.model, config.data.channels, config.data.image_size).to(device)
    if model.head.adapts_backbone and not getattr(model.head, "meta_trainable", False):
        raise FewshotError(f"head '{config.model.head}' adapts the backbone per episode at evaluation and is not "
                           "meta-trained: use it with fewshot eval / predict, and train with fewshot pretrain or "
                           "another head")
    if context.is_main:
        check_free_space(run_dir, model)
    saved = load_resume_point(run_dir, config, context, log) if resume else None

    train_split = open_phase(config, phase_spec(config.data, "train"), tcfg.ways, tcfg.shots, tcfg.queries, progress)
    val_spec = phase_spec(config.data, "val", required=False)
    val_split = None
    if val_spec and context.is_main:
        val_split = open_phase(config, val_spec, ecfg.ways, ecfg.shots, ecfg.queries, progress)
    validating = val_spec is not None and tcfg.val_every > 0

    optimizer = make_optimizer(config, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda episode: lr_factor(config, episode))
    state = TrainingState()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.load(saved)
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"], device)
        if context.is_main:
            log(f"resumed {run_dir} at episode {state.step}")

    checkpoints = run_dir / "checkpoints"
    metrics = None
    if context.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(config))
        metrics = MetricsLog(run_dir / "metrics.jsonl")

    net = model
    if context.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    sampler = EpisodeSampler(train_split.class_sizes, tcfg.ways, tcfg.shots, tcfg.queries, config.seed)
    augment = train_augmentation(config.data.augment, config.data.image_size, config.data.channels)
    world, rank = context.world_size, context.rank
    indices = range(state.step * world + rank, tcfg.episodes * world, world)
    loader = DataLoader(EpisodeDataset(train_split, sampler, indices, augment), batch_size=None,
                        num_workers=config.data.workers, pin_memory=device.type == "cuda")

    def save(name: str) -> None:
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda"
               else None}
        save_checkpoint(checkpoints / name, {"config": config.to_dict(), "model": model.state_dict(),
                                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                             "rng": rng, **state.to_dict()})

    model.train()
    state.started = last_saved = time.perf_counter()
    stopped_early = False
    interrupted = None
    first_episodes: list[int] = []
    bar = tqdm(total=tcfg.episodes, initial=state.step, desc="training", unit="episode",
               disable=None if progress else True)
    try:
        with StopRequest() as stop:
            for episode in loader:
                if len(first_episodes) < 4:
                    first_episodes.append(episode.index)
                episode = episode.to(device, non_blocking=True)
                with autocast(device, tcfg.amp):
                    logits = net(episode.support, episode.support_labels, episode.query, episode.ways)
                    loss = model.head.loss(logits.float(), episode.query_labels)
                if any_rank(not bool(torch.isfinite(loss)), context, device):
                    last = checkpoints / "last.pt"
                    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
                    raise FewshotError(f"loss became {loss.item()} at episode {state.step + 1} (episode index "
                                       f"{episode.index}); {kept}; lower train.lr or set train.grad_clip")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tcfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                optimizer.step()
                scheduler.step()
                state.step += 1
                correct = (logits.argmax(1) == episode.query_labels).sum().item()
                state.window = [a + b for a, b in zip(state.window, (loss.item(), correct, len(logits), 1))]
                bar.update(1)

                if state.step % tcfg.log_every == 0 or state.step == tcfg.episodes:
                    loss_sum, correct_sum, queries, count = all_sum(state.window, context, device)
                    record = {"kind": "train", "episode": state.step, "loss": loss_sum / count,
                              "accuracy": 100.0 * correct_sum / queries, "lr": optimizer.param_groups[0]["lr"],
                              "seconds": state.seconds()}
                    state.window = [0.0, 0.0, 0.0, 0.0]
                    if metrics:
                        metrics.write(record)
                        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.1f}",
                                        lr=f"{record['lr']:.2g}")

                saved_now = False
                if validating and (state.step % tcfg.val_every == 0 or state.step == tcfg.episodes):
                    stop_early = False
                    if context.is_main:
                        result = evaluate(model, val_split, ecfg.ways, ecfg.shots, ecfg.queries, tcfg.val_episodes,
                                          seed=config.seed + VAL_SEED_OFFSET, device=device,
                                          batch_size=ecfg.batch_size, progress=False,
                                          precision="auto" if tcfg.amp else "fp32")
                        metrics.write({"kind": "val", "episode": state.step, "accuracy": result.accuracy,
                                       "ci95": result.ci95})
                        bar.write(f"episode {state.step}: validation {result.summary()}")
                        if result.accuracy > state.best["accuracy"]:
                            state.best = {"accuracy": result.accuracy, "ci95": result.ci95, "episode": state.step}
                            state.stale = 0
                            save("best.pt")
                        else:
                            state.stale += 1
                        save("last.pt")
                        stop_early = bool(tcfg.patience and state.stale >= tcfg.patience)
                        if stop_early:
                            bar.write(f"stopping early: no validation improvement in {state.stale} validations")
                    saved_now = True
                    if broadcast_flag(stop_early, context, device):
                        stopped_early = True
                        break
                due = (tcfg.checkpoint_every and state.step % tcfg.checkpoint_every == 0) or (
                    tcfg.checkpoint_minutes and time.perf_counter() - last_saved > 60 * tcfg.checkpoint_minutes)
                if due and not saved_now and context.is_main:
                    save("last.pt")
                    saved_now = True
                if saved_now:
                    last_saved = time.perf_counter()
                if any_rank(stop.signal is not None, context, device):
                    interrupted = stop.signal or "signal on another rank"
                    if context.is_main:
                        save("last.pt")
                    break
    finally:
        bar.close()
        if metrics:
            metrics.close()

    summary = {"episodes": state.step, "minutes": state.seconds() / 60,
               "best_validation": state.best if state.best["accuracy"] >= 0 else None,
               "stopped_early": stopped_early, "interrupted": interrupted, "device": str(device),
               "world_size": world, "run_dir": str(run_dir)}
    if context.enabled:
        summary["rank_first_episodes"] = gather_objects(first_episodes, context)
        summary["parameter_spread_between_ranks"] = parameter_spread(model, context, device)
    if context.is_main and not interrupted:
        save("last.pt")
        if state.best["accuracy"] < 0:  # never validated: the final weights are the best we know
            save("best.pt")
        plot_training_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def default_run_dir(config_path: str | None) -> Path:
    """``runs/<config name>-<date>-<time>``."""
    name = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = ["train", "lr_factor", "default_run_dir", "FewShotModel"]
