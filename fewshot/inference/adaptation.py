"""Adapting a pretrained backbone to one support set (#35): a copy of the model whose top layers are fine-tuned on
the support images, so that its features fit classes ImageNet never had. The shared model is never changed.

How (``adapt="top"``): the backbone declares where it splits (:meth:`~fewshot.backbones.base.Backbone.adaptable_parts`:
EfficientNet-Lite's stages 1-5 as a frozen trunk, stages 6-7 and the head convolution as the top; every member of
an ensemble). The trunk's maps of the support images are computed once; the top is then trained for ``steps``
steps of Adam on them under a cosine classifier started at the class means, each step on augmented maps (a random
crop of 70-100 % of the map's side resized back, and a horizontal flip), BatchNorm statistics frozen (a handful
of images cannot estimate them). Training on cached maps makes a step cost the top's share of the network only:
5 classes x 5 images adapt in seconds on two CPU cores (benchmarks/RESULTS.md, "Beyond ImageNet").

:func:`model_for_support` is the one rule the Python API, the CLI and the episodic evaluator follow (``fewshot
serve`` runs it as a background job, fewshot/serve/adapting.py); an episode adapts a fresh copy from its own support
set only, so nothing learned crosses episodes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CapabilityError, FewshotError
from ..model.network import FewShotModel
from ..runtime import autocast

ADAPT_CHOICES = ("none", "top", "auto")
AUTO_MARGIN = 1.0  # standard errors the held-out gain must exceed for "auto" to adapt


@dataclass(frozen=True)
class AdaptSettings:
    """How the top is fine-tuned: ``steps`` of Adam at ``lr`` (the classifier at ``head_lr``), cosine logits
    scaled by ``scale``, augmentation on (``augment``), the random draws seeded by ``seed``; ``anchor`` weighs an
    L2-SP term, the squared distance of the top's weights from the pretrained ones, which keeps what ImageNet
    taught where the support set does not ask for a change (measured in benchmarks/RESULTS.md)."""

    steps: int = 40
    lr: float = 1e-3
    head_lr: float = 1e-2
    scale: float = 10.0
    augment: bool = True
    seed: int = 0
    anchor: float = 0.1
    precision: str = "fp32"  # the training steps' arithmetic (fewshot.runtime.autocast): fp32 or bf16


def check_adapt(adapt: str) -> str:
    if adapt not in ADAPT_CHOICES:
        raise FewshotError(f"adapt must be one of {', '.join(ADAPT_CHOICES)}, got '{adapt}'")
    return adapt


def can_adapt(model: FewShotModel) -> str | None:
    """None when ``model`` can adapt, else why not (one sentence)."""
    if not model.backbone.adaptable_parts():
        return (f"the backbone {type(model.backbone).__name__} declares no part that adapts (EfficientNet-Lite "
                "backbones and their ensembles do): use adapt='none'")
    if model.head.feature_map:
        return "heads that compare feature maps cannot use an adapted top: use adapt='none'"
    return None


def augmented(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(B, D, h, w)`` maps, each a random crop of 70-100 % of its side at a random place, resized back to
    ``(h, w)`` and mirrored half the time (one batched bilinear resample): the map-level counterpart of random
    resized crops and flips."""
    count = maps.shape[0]
    scale = 0.7 + 0.3 * torch.rand(count, generator=generator)
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * (1 - scale)[:, None]  # the crop stays inside
    mirror = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * mirror, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(maps.device, maps.dtype), list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_top(top: nn.Module, maps: torch.Tensor, labels: torch.Tensor, ways: int, settings: AdaptSettings,
              generator: torch.Generator, step_done: Callable[[], None] = lambda: None) -> list[float]:
    """Fine-tune ``top`` in place on trunk maps ``(S, D, h, w)`` with labels ``(S,)``; the losses per step."""
    top.eval()  # BatchNorm statistics stay as pretrained
    with torch.no_grad():
        means = torch.stack([F.normalize(top(maps), dim=-1)[labels == c].mean(0) for c in range(ways)])
    classifier = nn.Parameter(F.normalize(means, dim=-1))
    weights = [p for p in top.parameters() if p.requires_grad]
    pretrained = [p.detach().clone() for p in weights]  # where the pull towards the start point points
    optimizer = torch.optim.Adam([{"params": weights, "lr": settings.lr},
                                  {"params": [classifier], "lr": settings.head_lr}])
    losses = []
    for _ in range(settings.steps):
        batch = augmented(maps, generator) if settings.augment else maps
        with autocast(maps.device, settings.precision):
            features = top(batch)
        logits = settings.scale * F.normalize(features.float(), dim=-1) @ F.normalize(classifier, dim=-1).T
        loss = F.cross_entropy(logits, labels)
        if settings.anchor:  # L2-SP: the squared distance from the pretrained weights
            loss = loss + settings.anchor * sum(((w - w0) ** 2).sum() for w, w0 in zip(weights, pretrained))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step_done()
    return losses


def adapt_model(model: FewShotModel, images: torch.Tensor, labels: torch.Tensor, ways: int,
                settings: AdaptSettings = AdaptSettings(), step_done: Callable[[], None] = lambda: None
                ) -> FewShotModel:
    """A copy of ``model`` whose backbone top is fine-tuned on the support ``images`` (uint8 ``(S, C, H, W)``)
    with ``labels`` ``(S,)`` in ``0..ways-1``; ``model`` itself is not changed. The copy is in eval mode,
    without gradients, and marked ``adapted_to_support`` (its converted graphs are not kept on disk).
    ``step_done`` is called after every training step (a progress bar): :func:`adapt_steps` of them in all."""
    problem = can_adapt(model)
    if problem:
        raise CapabilityError(problem)
    with torch.inference_mode(False):  # evaluation runs in inference mode: the copy and its inputs must not
        adapted = copy.deepcopy(model).eval()
        adapted.requires_grad_(False)
        device = next(adapted.parameters()).device
        generator = torch.Generator().manual_seed(settings.seed)
        prepared = adapted.prepare(images.to(device).clone())
        targets = labels.to(device).clone()
        for part in adapted.backbone.adaptable_parts():
            with torch.no_grad():
                maps = part.trunk(prepared).float().contiguous()
            part.top.requires_grad_(True)
            with torch.enable_grad():
                train_top(part.top, maps, targets, ways, settings, generator, step_done)
            part.top.requires_grad_(False)
    adapted.adapted_to_support, adapted.adapt = True, "none"  # adapted already: it is not adapted again
    return adapted


def adapt_steps(model: FewShotModel, settings: AdaptSettings = AdaptSettings()) -> int:
    """How many training steps :func:`adapt_model` takes on ``model`` (for a progress bar's total)."""
    return settings.steps * len(model.backbone.adaptable_parts())


@dataclass
class AdaptDecision:
    """Whether adapting helps this support set, measured on it: ``folds`` splits each holding out part of every
    class, classified by the frozen and by an adapted model (adapted on the rest only); accuracies in percent
    (``frozen_accuracy``, ``adapted_accuracy``) over the ``held_out`` predictions, ``gain`` = adapted - frozen with
    its standard error ``gain_se`` (paired, per held-out image); ``likelihood_gain`` and ``likelihood_se``: the
    same for the log-probability of the right class (nats per image), which decides. ``adapt``: the choice;
    ``reason``: why, in one sentence."""

    adapt: bool
    reason: str
    frozen_accuracy: float | None = None
    adapted_accuracy: float | None = None
    gain: float | None = None
    gain_se: float | None = None
    held_out: int = 0
    folds: int = 0
    likelihood_gain: float | None = None
    likelihood_se: float | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def fold_groups(labels: torch.Tensor, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """Rows held out by each of ``min(folds, smallest class)`` folds: every class's rows shuffled and dealt
    round-robin, so each row is held out exactly once and every fold holds out part of every class."""
    generator = torch.Generator().manual_seed(seed)
    count = min(folds, int(torch.bincount(labels).min()))
    groups: list[list[int]] = [[] for _ in range(count)]
    for label in labels.unique().tolist():
        rows = torch.nonzero(labels == label).flatten()
        for position, row in enumerate(rows[torch.randperm(len(rows), generator=generator)].tolist()):
            groups[position % count].append(row)
    return [torch.tensor(sorted(g)) for g in groups]


def held_out_logits(model: FewShotModel, images: torch.Tensor, labels: torch.Tensor, held: torch.Tensor,
                    ways: int) -> torch.Tensor:
    """Uncalibrated logits ``(H, ways)`` of the held-out rows of ``images`` (uint8 ``(S, C, H, W)``) by ``model``
    fitted on the other rows (labels ``(S,)``)."""
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held] = False
    with torch.inference_mode():
        features = model.embed(images.to(next(model.parameters()).device)).float().cpu()
        fitted = model.fit(features[rest], labels[rest], ways)
        return model.fitted_logits(fitted, features[held]).float().cpu()


@dataclass
class FoldPredictions:
    """Held-out logits of the frozen and of the adapted models on :func:`fold_groups`: ``rows`` ``(N,)`` the
    held-out rows fold after fold, ``frozen`` / ``adapted`` ``(N, ways)``, ``folds`` how many."""

    rows: torch.Tensor
    frozen: torch.Tensor
    adapted: torch.Tensor
    folds: int


def fold_predictions(model: FewShotModel, images: torch.Tensor, labels: torch.Tensor, ways: int,
                     settings: AdaptSettings = AdaptSettings(), folds: int = 3,
                     step_done: Callable[[], None] = lambda: None) -> FoldPredictions:
    """For each fold: the frozen model and a copy adapted on the fold's rest (never on what it holds out)
    classify the held-out images. Needs two or more images in every class."""
    rows, frozen, adapted = [], [], []
    groups = fold_groups(labels, folds, settings.seed)
    for held in groups:
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[held] = False
        copy_ = adapt_model(model, images[rest], labels[rest], ways, settings, step_done)
        rows.append(held)
        frozen.append(held_out_logits(model, images, labels, held, ways))
        adapted.append(held_out_logits(copy_, images, labels, held, ways))
    return FoldPredictions(torch.cat(rows), torch.cat(frozen), torch.cat(adapted), len(groups))


def decide_adaptation(model: FewShotModel, images: torch.Tensor, labels: torch.Tensor, ways: int,
                      settings: AdaptSettings = AdaptSettings(), folds: int = 3, margin: float = AUTO_MARGIN,
                      step_done: Callable[[], None] = lambda: None) -> tuple[AdaptDecision, FoldPredictions | None]:
    """``adapt="auto"``: adapt only when, on :func:`fold_predictions` of the support images (uint8
    ``(S, C, H, W)``, labels ``(S,)``), the adapted models give the right class of the held-out images a higher
    log-probability than the frozen model by more than ``margin`` standard errors of the paired difference, and
    no lower accuracy. The log-probability decides because it sees every held-out image, not only the few whose
    answer flips: with 25 held-out images, a rule on accuracy alone adapted 5 of 12 traffic-sign support sets
    (where adapting gained 4.5 points), the log-probability all 12, and neither lost on faces or fruits, where
    adapting does (benchmarks/RESULTS.md, "Beyond ImageNet"). The predictions come back too (an honest estimate of
    whichever model is chosen). A class with a single image leaves nothing to hold out: no adapting then."""
    problem = can_adapt(model)
    if problem:
        return AdaptDecision(False, problem), None
    if int(torch.bincount(labels, minlength=ways).min()) < 2:
        return AdaptDecision(False, "a class has a single image, so nothing can be held out to show that adapting "
                                    "helps: not adapted (adapt='top' adapts anyway)"), None
    found = fold_predictions(model, images, labels, ways, settings, folds, step_done)
    truth = labels[found.rows]
    right = (found.adapted.argmax(-1) == truth).float(), (found.frozen.argmax(-1) == truth).float()
    likely = (found.adapted.log_softmax(-1).gather(1, truth[:, None]).squeeze(1),
              found.frozen.log_softmax(-1).gather(1, truth[:, None]).squeeze(1))
    (gain, se), (likelihood_gain, likelihood_se) = (paired_gain(*right, scale=100.0), paired_gain(*likely))
    chosen = likelihood_gain > 0 and likelihood_gain > margin * likelihood_se and gain >= 0
    frozen_, adapted_ = float(right[1].mean()) * 100, float(right[0].mean()) * 100
    reason = (f"held-out accuracy {adapted_:.1f} % adapted vs {frozen_:.1f} % frozen on {len(truth)} images in "
              f"{found.folds} folds (gain {gain:+.1f} ± {se:.1f} points; log-probability of the right class "
              f"{likelihood_gain:+.3f} ± {likelihood_se:.3f} per image): "
              + ("adapted" if chosen else "not adapted (fewer held-out images answered right)" if gain < 0
                 else f"not adapted (the log-probability gain is not above {margin:g} standard error)"))
    return AdaptDecision(chosen, reason, frozen_, adapted_, gain, se, len(truth), found.folds, likelihood_gain,
                         likelihood_se), found


def paired_gain(adapted: torch.Tensor, frozen: torch.Tensor, scale: float = 1.0) -> tuple[float, float]:
    """(mean of ``adapted - frozen``, its standard error), both times ``scale``, over paired values ``(N,)``."""
    difference = (adapted - frozen) * scale
    return float(difference.mean()), float(difference.std(unbiased=True)) / len(difference) ** 0.5


def model_for_support(model: FewShotModel, images: torch.Tensor, labels: torch.Tensor, ways: int,
                      step_done: Callable[[], None] = lambda: None, adapt: str | None = None
                      ) -> tuple[FewShotModel, AdaptDecision | None, FoldPredictions | None]:
    """The model to classify with after seeing this support set, as ``model.adapt`` says: ``model`` itself
    (``none``), an adapted copy (``top``), or whichever :func:`decide_adaptation` picks (``auto``, with its
    decision and fold predictions). ``adapt`` overrides ``model.adapt``. The one rule the classifier, the CLI,
    the server and the episodic evaluator follow."""
    adapt = check_adapt(adapt or getattr(model, "adapt", "none"))
    if adapt == "none":
        return model, None, None
    settings = AdaptSettings(steps=int(getattr(model, "adapt_steps", AdaptSettings.steps)))
    decision, folds = None, None
    if adapt == "auto":
        decision, folds = decide_adaptation(model, images, labels, ways, settings, step_done=step_done)
        if not decision.adapt:
            return model, decision, folds
    return adapt_model(model, images, labels, ways, settings, step_done), decision, folds


__all__ = ["ADAPT_CHOICES", "AUTO_MARGIN", "AdaptDecision", "AdaptSettings", "adapt_model", "adapt_steps", "augmented", "can_adapt",
           "check_adapt", "decide_adaptation", "FoldPredictions", "fold_groups", "fold_predictions", "held_out_logits",
           "model_for_support",
           "paired_gain", "train_top"]
