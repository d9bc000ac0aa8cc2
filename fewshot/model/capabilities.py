"""One rule per capability of a model, declared on its head (and backbone), checked by one function.

The CLI, the Python API and the server ask :func:`require` (or :func:`unsupported` to show a reason without
raising), so a capability is refused with the same :class:`~fewshot.errors.CapabilityError` and message
everywhere. The rules:

* ``export``: the head fits a state once (:meth:`fewshot.heads.Head.fit`) that classifies each image on its
  own: not a head that adapts the backbone per support set, not a transductive head (its episodic form needs
  a batch of queries; the inductive form it falls back to is not what it was chosen for), and the head
  declares ``exportable``.
* ``open_set``: a "none of these" score (:mod:`fewshot.inference.open_set`) needs the state the head fits once: not a head
  that adapts the backbone per support set.
* ``explain``: the head declares ``explainable`` and the backbone's feature maps at the model's image size
  are larger than 1x1 (a 1x1 map gives a flat heatmap: refused rather than drawn).

Images classified one at a time never go through a transductive head's episodic form: :meth:`FewShotModel.fit`
uses its inductive form, and :func:`single_image_note` is the one line that says so.
"""

from __future__ import annotations

import torch

from ..errors import CapabilityError
from ..heads import HEADS
from .network import FewShotModel

CAPABILITIES = ("export", "explain", "open_set")


def head_name(model: FewShotModel) -> str:
    """The registry name of the model's head (its class name when it is not registered)."""
    return next((name for name, cls in HEADS.items() if type(model.head) is cls), type(model.head).__name__)


def exportable_heads() -> list[str]:
    return [name for name, cls in HEADS.items() if cls.exportable and not cls.adapts_backbone and not cls.transductive]


def map_sizes(model: FewShotModel, image_size: int) -> list[tuple[int, int]]:
    """``(h, w)`` of each feature map the backbone gives at ``image_size`` (one dummy pass, remembered)."""
    known = getattr(model, "map_sizes_by_input", {})
    if image_size not in known:
        device = next(model.backbone.parameters()).device
        was_training = model.backbone.training
        model.backbone.eval()
        with torch.no_grad():
            maps = model.backbone.forward_maps(torch.zeros(1, model.channels, image_size, image_size, device=device))
        model.backbone.train(was_training)
        known[image_size] = [tuple(m.shape[-2:]) for m in maps]
        model.map_sizes_by_input = known
    return known[image_size]


def unsupported(model: FewShotModel, capability: str, image_size: int | None = None) -> str | None:
    """None when ``model`` has ``capability`` (one of :data:`CAPABILITIES`), else the one-line reason."""
    head, name = model.head, head_name(model)
    if capability == "export":
        others = f"export a model with one of: {', '.join(exportable_heads())}"
        if head.adapts_backbone:
            return f"head '{name}' adapts the network to each support set, so it cannot be exported; {others}"
        if head.transductive:
            return (f"head '{name}' is transductive (it classifies a batch of queries together), so it cannot be "
                    f"exported; {others}")
        if not head.exportable:
            return f"head '{name}' cannot be exported; {others}"
        return None
    if capability == "open_set":
        if head.adapts_backbone:
            return (f"head '{name}' adapts the network to each support set, so it has no fitted state to measure "
                    "'none of these' against; use a head that fits once (e.g. protonet)")
        return None
    if capability == "explain":
        if not head.explainable:
            return f"head '{name}' cannot be explained with Grad-CAM"
        if image_size is not None and all(h * w <= 1 for h, w in map_sizes(model, image_size)):
            return (f"the backbone's feature maps are 1x1 at {image_size} px, so a Grad-CAM heatmap would be flat; "
                    "use a larger image size or a backbone with spatial maps")
        return None
    raise ValueError(f"unknown capability '{capability}'; one of {', '.join(CAPABILITIES)}")


def require(model: FewShotModel, capability: str, image_size: int | None = None) -> None:
    """Raise :class:`~fewshot.errors.CapabilityError` with :func:`unsupported`'s reason, if any."""
    reason = unsupported(model, capability, image_size)
    if reason:
        raise CapabilityError(reason)


def single_image_note(model: FewShotModel) -> str | None:
    """For a transductive head: the one line saying that queries arriving one at a time (predict, the API,
    the server) are classified by its inductive form; None for the other heads."""
    if not model.head.transductive:
        return None
    return (f"head '{head_name(model)}' is transductive: it needs a batch of queries spread over the classes, so "
            f"images classified one at a time or in an unknown mix use its inductive form "
            f"({model.head.inductive_form}); fewshot eval keeps the transductive form")


__all__ = ["CAPABILITIES", "exportable_heads", "head_name", "map_sizes", "require", "single_image_note", "unsupported"]
