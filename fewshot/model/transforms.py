"""Feature transforms applied to embeddings before the head (``model.transform``).

A transform is fitted on the support embeddings ``(..., S, E)`` (any leading episode dimensions) and then
applied to any embeddings ``(..., N, E)``: its statistics come from the support set only, so it is inductive
(a query's result never depends on the other queries), and a fitted classifier keeps the statistics as
tensors (:class:`Transform.fit` returns them) to apply to one image at a time.

* ``none``: as embedded.
* ``l2n``: L2-normalize every embedding.
* ``cl2n``: SimpleShot's CL2N (Wang et al. 2019): subtract the support set's mean embedding, then L2-normalize.
* ``power_cl2n``: the power transform ``x ** 0.5`` (Hu et al. 2021, on non-negative post-ReLU features;
  negative values keep their sign), then CL2N.

A transform is one :class:`Transform` entry in ``TRANSFORMS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

TransformState = dict[str, torch.Tensor]
TTA = ("none", "flip")  # test-time augmentation of embeddings (model.tta): none, or the mean with the mirrored image


def power(features: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Signed power ``sign(x) * |x| ** beta``: compresses large activations, Gaussianizes skewed features."""
    return features.sign() * features.abs().clamp_min(1e-12).pow(beta)


def no_state(support: torch.Tensor) -> TransformState:
    return {}


def support_centre(support: torch.Tensor) -> TransformState:
    """``{"centre": (..., 1, E)}``: the mean support embedding."""
    return {"centre": support.mean(dim=-2, keepdim=True)}


def power_centre(support: torch.Tensor) -> TransformState:
    return support_centre(power(support))


@dataclass(frozen=True)
class Transform:
    """``fit(support (..., S, E)) -> state`` (tensors), ``apply(state, features (..., N, E)) -> (..., N, E)``."""

    fit: Callable[[torch.Tensor], TransformState]
    apply: Callable[[TransformState, torch.Tensor], torch.Tensor]


TRANSFORMS: dict[str, Transform] = {
    "none": Transform(no_state, lambda state, x: x),
    "l2n": Transform(no_state, lambda state, x: F.normalize(x, dim=-1)),
    "cl2n": Transform(support_centre, lambda state, x: F.normalize(x - state["centre"], dim=-1)),
    "power_cl2n": Transform(power_centre, lambda state, x: F.normalize(power(x) - state["centre"], dim=-1)),
}


def fit_transform(name: str, support: torch.Tensor) -> TransformState:
    """The statistics of ``TRANSFORMS[name]`` on support embeddings ``(..., S, E)``."""
    return TRANSFORMS[name].fit(support)


def transform_features(name: str, state: TransformState, features: torch.Tensor) -> torch.Tensor:
    """``TRANSFORMS[name]`` with fitted ``state`` on embeddings ``(..., N, E)``."""
    return TRANSFORMS[name].apply(state, features)


def apply_transform(name: str, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TRANSFORMS[name]`` fitted on ``support`` and applied to both (one or several episodes' embeddings)."""
    if name == "none":
        return support, query
    state = fit_transform(name, support)
    return transform_features(name, state, support), transform_features(name, state, query)
