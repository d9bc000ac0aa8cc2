"""Feature transforms applied to an episode's embeddings before the head (``model.transform``).

Each takes support embeddings ``(..., S, E)`` and query embeddings ``(..., Q, E)`` (any leading episode
dimensions) and returns both transformed; statistics come from the support set only, so a transform is
inductive: a query's result never depends on the other queries.

* ``none``: as embedded.
* ``l2n``: L2-normalize every embedding.
* ``cl2n``: SimpleShot's CL2N (Wang et al. 2019): subtract the support set's mean embedding, then L2-normalize.
* ``power_cl2n``: the power transform ``x ** 0.5`` (Hu et al. 2021, on non-negative post-ReLU features;
  negative values keep their sign), then CL2N.

A transform is one function and one line in ``TRANSFORMS``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def l2n(support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(support, dim=-1), F.normalize(query, dim=-1)


def cl2n(support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = support.mean(dim=-2, keepdim=True)  # (..., 1, E)
    return F.normalize(support - centre, dim=-1), F.normalize(query - centre, dim=-1)


def power(features: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Signed power ``sign(x) * |x| ** beta``: compresses large activations, Gaussianizes skewed features."""
    return features.sign() * features.abs().clamp_min(1e-12).pow(beta)


def power_cl2n(support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return cl2n(power(support), power(query))


TRANSFORMS: dict[str, Transform | None] = {
    "none": None,
    "l2n": l2n,
    "cl2n": cl2n,
    "power_cl2n": power_cl2n,
}


def apply_transform(name: str, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TRANSFORMS[name]`` on one or several episodes' embeddings (see the module docstring)."""
    transform = TRANSFORMS[name]
    return (support, query) if transform is None else transform(support, query)
