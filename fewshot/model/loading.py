"""Build the model a user names: a checkpoint or run directory, a recipe, or a backbone and head.

One function for the CLI (``--recipe``, ``--backbone``...), the Python API (:class:`fewshot.FewShotClassifier`)
and the server, so that each names a model the same way and gets the same model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import Config, config_from_dict
from ..errors import FewshotError
from .network import FewShotModel, build_model


def load_model(checkpoint: str | os.PathLike | None = None, *, recipe: str | None = None, backbone: str | None = None,
               head: str | None = None, weights: str = "none", image_size: int | None = None,
               channels: int | None = None, head_options: list[str] | dict | None = None,
               backbone_options: list[str] | dict | None = None, transform: str | None = None,
               tta: str | None = None) -> tuple[FewShotModel, Config]:
    """(model, its resolved config).

    ``checkpoint``: a checkpoint file or run directory (its ``checkpoints/best.pt``); a backbone, head or
    size given beside it must match. Otherwise ``recipe`` (``default`` when no backbone or head is given
    either), or ``backbone`` + ``head`` with ``weights`` (``none``, ``imagenet`` or a file). Options are
    ``KEY=VALUE`` strings or a dict; ``transform`` / ``tta`` override the checkpoint's or recipe's.
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .recipes import RECIPES

    if isinstance(checkpoint, str) and checkpoint in RECIPES and not Path(checkpoint).exists():
        if recipe:
            raise FewshotError(f"'{checkpoint}' and --recipe {recipe} both name a recipe: give one")
        checkpoint, recipe = None, checkpoint  # `fewshot predict fast ...` names the recipe 'fast'
    if checkpoint and recipe:
        raise FewshotError("give a checkpoint or a recipe, not both")
    if checkpoint:
        model, config = model_from_checkpoint(load_checkpoint(checkpoint), backbone, head, image_size)
        if channels and channels != config.data.channels:
            raise FewshotError(f"the checkpoint was trained on {config.data.channels}-channel images, not {channels}")
        config.model.transform = transform or config.model.transform
        config.model.tta = tta or config.model.tta
        model.set_test_time(config.model.transform, config.model.tta)
        return model, config
    if recipe and (backbone or head):
        raise FewshotError("give a recipe, or a backbone and a head, not both")
    if recipe or not (backbone or head):
        from .recipes import get_recipe

        recipe = recipe or "default"
        if channels == 1:
            raise FewshotError(f"recipe '{recipe}' takes RGB images: drop --channels 1")
        overrides = get_recipe(recipe).overrides()
    elif not backbone or not head:
        raise FewshotError("give a checkpoint or run directory, a recipe, or both a backbone and a head")
    else:
        overrides = [f"model.backbone={backbone}", f"model.weights={weights}", f"model.head={head}",
                     f"data.channels={channels or 3}"]
    overrides += [f"data.image_size={image_size}"] if image_size else []
    overrides += _option_overrides("model.head_options", head_options)
    overrides += _option_overrides("model.backbone_options", backbone_options)
    overrides += [f"model.transform={transform}"] if transform else []
    overrides += [f"model.tta={tta}"] if tta else []
    config = config_from_dict({}, overrides)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(config.seed)  # randomly initialised parts are the same on every call
        return build_model(config.model, config.data.channels, config.data.image_size), config


def _option_overrides(prefix: str, options: list[str] | dict | None) -> list[str]:
    if not options:
        return []
    if isinstance(options, dict):
        import json

        return [f"{prefix}.{key}={json.dumps(value)}" for key, value in options.items()]
    return [f"{prefix}.{item}" for item in options]
