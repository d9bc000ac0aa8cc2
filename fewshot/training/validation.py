"""Validation during training: a fixed set of episodes drawn once from the validation classes, distinct from the
training stream, evaluated at every ``val_every`` steps (and the open-set check a validation split must pass)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import Config
from ..errors import FewshotError
from .distributed import DistContext
from .run_directory import RunDirectory


VAL_SEED_OFFSET = 1_000_003  # validation episodes are a fixed set, distinct from the training stream


def validation(model: torch.nn.Module, config: Config, episodes: int, context: DistContext, device: torch.device,
               progress: bool, run: RunDirectory | None = None) -> Callable[[], Any] | None:
    """A function that validates ``model`` on the config's val split(s), or None when there is none. The
    episodes (``episodes`` per source, by ``data.protocol``) are the same at every validation: drawn at the
    first one and saved in the run directory as ``val_episodes.jsonl`` (read back on resume). Only rank 0
    opens the splits."""
    from ..evaluation.data import check_head_ways, episode_sampler, open_source, phase_sources
    from ..evaluation.episode_sets import validation_episodes
    from ..evaluation.episodic import evaluate_sources

    sources = phase_sources(config.data, "val", required=False)
    if not sources:
        return None
    ecfg = config.eval
    shape = (ecfg.ways, ecfg.shots, ecfg.queries)
    opened = [(s, open_source(config, s, shape, progress)) for s in sources] if context.is_main else []
    for source, split in opened:  # before training starts, not at the first validation
        check_head_ways(model.head, episode_sampler(config, split, shape, 0), source.name or source.spec.describe())
        check_open_set_validation(model, config, split, source.name or source.spec.describe())
    sets: list = []

    def validate():
        if not sets:
            path = run.path / "val_episodes.jsonl" if run is not None and run.is_main else None
            sets.extend(validation_episodes(config, opened, shape, episodes, config.seed + VAL_SEED_OFFSET, path))
        result = evaluate_sources(model, sets, seed=config.seed + VAL_SEED_OFFSET, device=device,
                                  batch_size=ecfg.batch_size, progress=False,
                                  precision="auto" if config.train.amp else "fp32", runtime=ecfg.runtime)
        if ecfg.open_set:
            from ..evaluation.open_set import evaluate_open_set

            for (_, split), part in zip(opened, getattr(result, "results", {"": result}).values()):
                found = evaluate_open_set(model, split, *shape, episodes, ecfg.open_set,
                                          config.seed + VAL_SEED_OFFSET, device, ecfg.batch_size, False, ecfg.runtime,
                                          ecfg.unknown_score, config.model.temperature).extra["open_set"]
                part.extra["open_set"] = {k: v for k, v in found.items() if k != "per_episode_auroc"}
        return result

    return validate


def check_open_set_validation(model: torch.nn.Module, config: Config, split, where: str) -> None:
    """With ``eval.open_set``, before training starts: the head can score unknowns and the split has the classes."""
    if not config.eval.open_set:
        return
    from ..model.capabilities import require

    require(model, "open_set")
    need = config.eval.ways + config.eval.open_set
    if len(split.class_sizes) < need:
        raise FewshotError(f"eval.open_set={config.eval.open_set}: validation episodes need {config.eval.ways} "
                           f"known + {config.eval.open_set} unseen classes, {where} has {len(split.class_sizes)}")
