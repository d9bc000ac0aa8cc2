"""Checkpoints: what a run saves, written atomically, and checked when loaded.

A checkpoint is a dict saved with ``torch.save``: ``format``, ``config`` (the full resolved config as a
dict), ``model`` (state dict), and for training ``optimizer``, ``scheduler``, ``episode`` (episodes
done), ``best`` (best validation) and ``rng`` (random states). Every value is a tensor or a plain
Python value, so checkpoints load with ``weights_only=True`` and a planted pickle cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..backbones.base import state_dict_mismatch
from ..config import Config, config_from_dict
from ..errors import FewshotError
from ..safe_io import safe_load
from .network import FewShotModel, build_model

__all__ = ["FORMAT", "load_checkpoint", "load_model_state", "model_from_checkpoint", "rebuild_model",
           "resolve_checkpoint", "safe_load", "save_checkpoint"]

FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save ``state`` (plus the format number) to ``path`` atomically."""
    return atomic_write(path, lambda handle: torch.save({"format": FORMAT, **state}, handle))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoints/best.pt``, else ``last.pt``)."""
    target = Path(path).expanduser()
    if target.is_dir():
        for name in ("best.pt", "last.pt"):
            if (target / "checkpoints" / name).is_file():
                return target / "checkpoints" / name
        raise FewshotError(f"{target} holds no checkpoints/best.pt or checkpoints/last.pt: is it a run directory?")
    if not target.is_file():
        from .recipes import RECIPES, did_you_mean

        raise FewshotError(f"checkpoint {target} does not exist{did_you_mean(str(path))}; a model is a recipe "
                           f"({', '.join(RECIPES)}; fewshot recipes lists them), a run directory or a checkpoint file")
    return target


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fewshot checkpoint (file or run directory) safely, or raise a one-line error."""
    file = resolve_checkpoint(path)
    state = safe_load(file, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise FewshotError(f"{file} is not a fewshot checkpoint (no model and config inside)")
    if state.get("format", 0) > FORMAT:
        raise FewshotError(f"{file} was written by a newer fewshot (format {state['format']}): upgrade fewshot")
    state["path"] = str(file)
    return state


def model_from_checkpoint(state: dict[str, Any], backbone: str | None = None, head: str | None = None,
                          image_size: int | None = None) -> tuple[FewShotModel, Config]:
    """Rebuild the model saved in ``state``; a requested backbone, head or size that differs is an error."""
    config = config_from_dict(state["config"])
    saved = {"backbone": config.model.backbone, "head": config.model.head, "image size": config.data.image_size}
    asked = {"backbone": backbone, "head": head, "image size": image_size}
    for key, value in asked.items():
        if value is not None and value != saved[key]:
            raise FewshotError(f"checkpoint {state['path']} was trained with {key} '{saved[key]}', not '{value}': "
                               f"drop that flag or use a matching checkpoint")
    return rebuild_model(state["config"], state["model"], state.get("normalization"), state["path"])


def rebuild_model(config: dict, weights: dict, normalization: list | None, source: str
                  ) -> tuple[FewShotModel, Config]:
    """The model a saved config and state dict describe (a checkpoint, a saved classifier, an export job): built
    without pretrained weights (the state dict holds them), loaded strictly, with the input statistics it was
    saved with when given (pretrained weights decide them)."""
    config = config_from_dict(config)
    config.model.weights = "none"
    model = build_model(config.model, config.data.channels, config.data.image_size)
    load_model_state(model, weights, source)
    if normalization is not None:
        model.mean, model.std = (tuple(float(v) for v in values) for values in normalization)
    return model, config


def load_model_state(model: FewShotModel, weights: dict, source: str) -> None:
    """Load a state dict strictly, with a one-line error naming what does not fit."""
    problem = state_dict_mismatch(model, weights)
    if problem:
        raise FewshotError(f"checkpoint {source} does not fit this model: {problem}")
    model.load_state_dict(weights)
