"""What every backbone gives: a feature map and a pooled embedding, for any input size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import FewshotError


class Backbone(nn.Module):
    """An image encoder.

    ``forward_features(x)``: ``(B, C, H, W)`` float images -> ``(B, D, h, w)`` feature map.
    ``forward(x)``: ``(B, C, H, W)`` -> ``(B, E)`` embedding, the map average-pooled (``E = D``) or,
    when ``pool == "flatten"``, flattened (``E = D*h*w``, as in Snell et al.'s Conv4).
    """

    pool: str = "avg"
    native_size: int | None = None  # input side the pretrained weights were made for (the default image size)
    mean: tuple[float, ...] | None = None  # input normalization the weights expect; None: the default
    std: tuple[float, ...] | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.forward_features(x))

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The spatial feature maps the embedding is pooled from, one ``(B, D_i, h_i, w_i)`` per member (Grad-CAM
        explains each): ``[forward_features(x)]`` for a single network."""
        return [self.forward_features(x)]

    def pool_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward_maps`' output -> the ``(B, E)`` embedding :meth:`forward` gives."""
        return self.pool_features(maps[0])

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` feature map -> ``(B, E)`` embedding."""
        return features.flatten(1) if self.pool == "flatten" else features.mean(dim=(2, 3))

    def stages(self) -> list[nn.Module]:
        """The backbone's blocks from input to output, for fine-tuning the last few."""
        return list(self.children())

    def adaptable_parts(self) -> list["AdaptablePart"]:
        """The parts of the network that adapt to a support set (:mod:`fewshot.inference.adaptation`), each a frozen trunk
        and a trainable top; empty (the default) when the backbone declares none."""
        return []

    def adapt_state_dict(self, state: dict) -> dict:
        """Rename a foreign state dict's keys to this module's (``weights: PATH``); unchanged by default."""
        return state


@dataclass(frozen=True)
class AdaptablePart:
    """One embedding of a backbone split for adaptation: ``trunk(x)`` maps the backbone's input ``(B, C, H, W)`` to
    the maps ``(B, D, h, w)`` the adaptation starts from (kept frozen); ``top`` maps those to the part's pooled
    embedding ``(B, E)`` and holds the backbone's own modules, so training it changes the backbone (a copy)."""

    trunk: Callable[[torch.Tensor], torch.Tensor]
    top: nn.Module


@dataclass(frozen=True)
class Family:
    """A family of backbones named by a prefix (``timm:<name>``, ``ensemble:<a>+<b>``), declared in its own file
    and registered by one line in ``backbones.FAMILIES``. ``build(name, in_channels, weights, options, registry)``
    and ``native_size(name, registry)`` get the full name and the registry (:class:`Registry`: ``build`` and
    ``native_size`` of any backbone name), so a family made of other backbones imports nothing above it."""

    prefix: str
    build: Callable[..., "Backbone"]
    native_size: Callable[[str, "Registry"], int | None]
    describe: str  # for error messages: "timm:<name> for any timm model"


@dataclass(frozen=True)
class Registry:
    """What a family may ask of the registry: build or size any backbone by name."""

    build: Callable[..., "Backbone"]
    native_size: Callable[[str], int | None]


def state_dict_mismatch(module: nn.Module, state: dict) -> str | None:
    """None when ``state`` fits ``module`` exactly, else a short description of what does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in state if k in own and tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))]
    if not (missing or unexpected or misshaped):
        return None
    return (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped tensors "
            f"(e.g. {(misshaped + missing + unexpected)[:2]})")


def load_weights_file(module: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load a local state dict (or a fewshot checkpoint's backbone) into ``module`` with strict checking."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FewshotError(f"weights file {file} does not exist (model.weights: none | imagenet | PATH)")
    from ..safe_io import safe_load

    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise FewshotError(f"{file} is a safetensors file: pip install safetensors") from None
        try:
            state = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            raise FewshotError(f"cannot read weights file {file}: {str(exc).splitlines()[0][:200]}") from None
    else:
        state = safe_load(file, "weights file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        trained = state.get("config", {}).get("data", {}).get("image_size") if isinstance(state.get("config"),
                                                                                         dict) else None
        module.trained_image_size = trained  # build_model warns when the new image size differs
        state = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    elif isinstance(state, dict) and "backbone" in state and isinstance(state["backbone"], dict):
        state = state["backbone"]
    if not isinstance(state, dict):
        raise FewshotError(f"weights file {file} holds no state dict")
    if hasattr(module, "adapt_state_dict"):
        state = module.adapt_state_dict(state)
    problem = state_dict_mismatch(module, state)
    if problem:
        raise FewshotError(f"weights file {file} does not fit backbone '{name}': {problem}")
    module.load_state_dict(state)
