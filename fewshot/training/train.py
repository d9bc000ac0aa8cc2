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

import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from episodes import Episode, EpisodeDataset, train_augmentation

from ..config import Config
from ..errors import FewshotError
from ..evaluation.data import check_head_ways, episode_stream, open_source, phase_sources
from ..heads import head_names
from ..model.network import FewShotModel, build_model
from ..runtime import autocast, seed_everything
from .distributed import DistContext, data_parallel, gather_objects, parameter_spread
from .lifecycle import Job, begin, launch, run_steps
from .optim import Schedule, build_optimizer, build_scheduler
from .run_directory import RunDirectory
from .validation import validation

MUST_MATCH = ("model.backbone", "model.head", "model.backbone_options", "model.head_options", "data.image_size",
              "data.channels")


def schedule_of(config: Config) -> Schedule:
    """The learning-rate schedule of ``train.*``, in episodes (optimizer steps)."""
    train = config.train
    return Schedule(train.schedule, train.episodes, train.warmup, train.step_size, train.gamma)


def lr_factor(config: Config, episode: int) -> float:
    """Learning-rate multiplier after ``episode`` episodes: linear warm-up, then step or cosine decay."""
    return schedule_of(config).factor(episode)


def check_meta_trainable(model: FewShotModel, head: str) -> None:
    if not model.head.meta_trainable:
        raise FewshotError(f"head '{head}' is not meta-trained (it adapts the network per episode at evaluation): "
                           f"use it with fewshot eval / predict, and train with fewshot pretrain or one of "
                           f"{', '.join(head_names('meta_trainable'))}")


def train(config: Config, run_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Meta-train as ``config`` says, writing into ``run_dir``; return the summary dict."""
    return launch(_train, config, run_dir, resume, progress, log)


def episode_loader(config: Config, opened: list, start: int, context: DistContext, device: torch.device
                   ) -> DataLoader:
    """Training episodes from number ``start`` on; rank ``r`` of ``N`` takes episodes ``s*N + r``. ``opened``:
    ``[(Source, split)]``; with several, each episode comes from one source drawn by weight. Episodes follow
    ``data.protocol`` (N-way K-shot of ``train.*``, or Meta-Dataset's variable ones).

    The loader has its own generator, so creating it draws nothing from torch's global random state
    (which an exact resume restores)."""
    tcfg = config.train
    split, sampler = episode_stream(config, opened, (tcfg.ways, tcfg.shots, tcfg.queries), config.seed)
    augment = train_augmentation(config.data.augment, config.data.image_size, config.data.channels)
    world, rank = context.world_size, context.rank
    indices = range(start * world + rank, tcfg.episodes * world, world)
    return DataLoader(EpisodeDataset(split, sampler, indices, augment), batch_size=None,
                      num_workers=config.data.workers, generator=torch.Generator().manual_seed(config.seed))


def _train(config: Config, run: RunDirectory, progress: bool, log: Callable[[str], None], context: DistContext,
           device: torch.device) -> dict:
    tcfg = config.train
    seed_everything(config.seed)
    model = build_model(config.model, config.data.channels, config.data.image_size).to(device)
    check_meta_trainable(model, config.model.head)
    run.check(model)
    saved = run.resume_point(config, MUST_MATCH, "train.episodes", tcfg.episodes, log,
                             world_size=context.world_size) if run.resume else None
    shape = (tcfg.ways, tcfg.shots, tcfg.queries)
    train_splits = [(source, open_source(config, source, shape, progress))
                    for source in phase_sources(config.data, "train")]
    check_head_ways(model.head, episode_stream(config, train_splits, shape, config.seed)[1], "training episodes")
    validate = validation(model, config, tcfg.val_episodes, context, device, progress, run)
    net = data_parallel(model, context, device)

    def forward(episode: Episode) -> tuple[torch.Tensor, int, int]:
        episode = episode.to(device, non_blocking=True)
        with autocast(device, tcfg.amp):
            logits = net(episode.support, episode.support_labels, episode.query, episode.ways)
            loss = model.head.loss(logits.float(), episode.query_labels)
        return loss, int((logits.argmax(1) == episode.query_labels).sum()), len(logits)

    optimizer = build_optimizer(tcfg.optimizer, model.parameters(), tcfg.lr, tcfg.momentum, tcfg.weight_decay)
    job = Job(config, {"model": model}, optimizer, build_scheduler(optimizer, schedule_of(config)), forward,
              where=lambda episode: f"episode index {episode.index}", total=tcfg.episodes, log_every=tcfg.log_every,
              val_every=tcfg.val_every, validate=validate, grad_clip=tcfg.grad_clip,
              patience=tcfg.patience, checkpoint_every=tcfg.checkpoint_every,
              checkpoint_minutes=tcfg.checkpoint_minutes)
    state = begin(job, run, saved, context, device, log)
    outcome = run_steps(job, episode_loader(config, train_splits, state.step, context, device), run, state, context,
                        device, progress)
    summary = {"episodes": state.step, "minutes": state.seconds() / 60,
               "best_validation": state.best if state.best["accuracy"] >= 0 else None,
               "stopped_early": outcome["stopped_early"], "interrupted": outcome["interrupted"],
               "device": str(device), "world_size": context.world_size, "run_dir": str(run.path)}
    if context.enabled:
        summary["rank_first_episodes"] = gather_objects(outcome["first"], context)
        summary["parameter_spread_between_ranks"] = parameter_spread(model, context, device)
    if not outcome["interrupted"]:
        run.finish(summary)
    return summary


def default_run_dir(config_path: str | None) -> Path:
    """``runs/<config name>-<date>-<time>``."""
    name = Path(config_path).stem if config_path else "run"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


__all__ = ["train", "lr_factor", "default_run_dir", "FewShotModel"]
