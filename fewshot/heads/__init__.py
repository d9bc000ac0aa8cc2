"""Heads, one file each, registered by name. Adding one: a file and a line in ``HEADS``.

A head class takes ``embedding_dim`` and ``feature_shape`` (of the backbone, for the configured image
size) first; its other constructor arguments are set from the config's ``model.head_options``.
"""

from __future__ import annotations

from ..backbones import check_options
from ..errors import FewshotError
from .alpha_tim import AlphaTIM
from .anil import ANIL
from .base import Head, class_means
from .baseline_pp import BaselinePP
from .bd_cspn import BDCSPN
from .dn4 import DN4
from .feat import FEAT
from .finetune import FineTune
from .frn import FRN
from .laplacianshot import LaplacianShot
from .linear_probe import LinearProbe
from .maml import MAML
from .matching import MatchingNet
from .metaoptnet import MetaOptNetSVM
from .protonet import ProtoNet
from .pt_map import PTMAP
from .r2d2 import R2D2
from .relation import RelationNet
from .tim import TIM

HEADS: dict[str, type[Head]] = {
    "protonet": ProtoNet,
    "relation": RelationNet,
    "linear_probe": LinearProbe,
    "finetune": FineTune,
    "maml": MAML,
    "anil": ANIL,
    "pt_map": PTMAP,
    "tim": TIM,
    "bd_cspn": BDCSPN,
    "matching": MatchingNet,
    "r2d2": R2D2,
    "dn4": DN4,
    "alpha_tim": AlphaTIM,
    "metaoptnet": MetaOptNetSVM,
    "laplacianshot": LaplacianShot,
    "frn": FRN,
    "feat": FEAT,
    "baseline_pp": BaselinePP,
}


def register_head(name: str, cls: type[Head]) -> type[Head]:
    """Add a head class to the registry (what the ``HEADS`` line does for the heads shipped here)."""
    if not (isinstance(cls, type) and issubclass(cls, Head)):
        raise TypeError(f"head '{name}' must be a subclass of fewshot.heads.Head")
    HEADS[name] = cls
    return cls


def head_names(capability: str | None = None) -> list[str]:
    """Registered head names, optionally only those whose class declares ``capability`` True."""
    return [name for name, cls in HEADS.items() if capability is None or getattr(cls, capability)]


def build_head(name: str, embedding_dim: int, feature_shape: tuple[int, ...], **options) -> Head:
    """Instantiate the head registered as ``name``."""
    if name not in HEADS:
        raise FewshotError(f"unknown head '{name}'; choose one of {', '.join(HEADS)}")
    cls = HEADS[name]
    check_options(cls, options, "model.head_options", ("embedding_dim", "feature_shape"))
    return cls(embedding_dim, feature_shape, **options)


__all__ = ["HEADS", "Head", "build_head", "class_means", "head_names", "register_head"]
