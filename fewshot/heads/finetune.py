"""Fine-tuning head: per episode, fine-tune a classifier and the backbone's last blocks on the support set.

The recipe for adapting a pretrained network to a few images: a linear classifier initialised from the
class prototypes, the last ``blocks`` stages of the backbone unfrozen with a small learning rate
(``backbone_lr``) and the classifier with a larger one (``head_lr``), support images augmented at every
step, optionally unfreezing one more stage every ``unfreeze_every`` steps (gradual unfreezing).
BatchNorm stays in evaluation mode with frozen running statistics (``bn: frozen``, the default), the
safe choice with a handful of images; ``bn: train`` lets them move. The backbone is restored to its
original weights after every episode, so episodes are independent.

``lr_candidates`` (P>M>F's test-time recipe, Hu et al. 2022): instead of one fixed ``backbone_lr``, each
episode picks its own from the candidates on a pseudo-episode cut from the support set alone (the queries
are never looked at). With two or more images in every class, one image per class is held out as the
pseudo-query, together with ``pseudo_views`` augmented views of it; with a single image in some class,
the pseudo-queries are ``pseudo_views`` augmented views of every support image (P>M>F's choice). Each
candidate fine-tunes on the pseudo-support for ``steps`` steps; the one with the best pseudo-query
accuracy wins (ties: the higher mean log-probability of the true class, then the smaller rate), and the
network is then fine-tuned on the whole support set with it. A candidate of 0 means "classifier only".
The choice costs ``len(lr_candidates)`` extra fine-tunings per episode; ``last_backbone_lr`` holds it.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewshotError
from .base import Head, Network, class_means


class FineTune(Head):
    adapts_backbone = True
    meta_trainable = False
    exportable = False
    quick_options = {"steps": 2, "pseudo_views": 1}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], steps: int = 50, blocks: int = 1,
                 backbone_lr: float = 1e-4, head_lr: float = 1e-3, weight_decay: float = 1e-4,
                 unfreeze_every: int = 0, bn: str = "frozen", augment: str = "flip", temperature: float = 10.0,
                 lr_candidates: list[float] | None = None, pseudo_views: int = 4):
        super().__init__(embedding_dim, feature_shape)
        from episodes.images import AUGMENTATION_OPS, PRESETS

        if bn not in ("frozen", "train"):
            raise FewshotError(f"finetune bn must be frozen or train, got '{bn}'")
        for name, value in (("steps", steps), ("blocks", blocks), ("unfreeze_every", unfreeze_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FewshotError(f"finetune {name} must be an integer >= 0, got {value!r}")
        for name, value in (("backbone_lr", backbone_lr), ("head_lr", head_lr), ("temperature", temperature)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise FewshotError(f"finetune {name} must be a number > 0, got {value!r}")
        if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise FewshotError(f"finetune weight_decay must be a number >= 0, got {weight_decay!r}")
        names = [augment] if isinstance(augment, str) else list(augment)
        if any(n not in PRESETS and n not in AUGMENTATION_OPS for n in names):
            raise FewshotError(f"finetune augment must be a preset ({', '.join(PRESETS)}) or a list of operations "
                               f"({', '.join(AUGMENTATION_OPS)}), got {augment!r}")
        self.steps, self.blocks, self.backbone_lr, self.head_lr = steps, blocks, backbone_lr, head_lr
        self.weight_decay, self.unfreeze_every, self.bn, self.augment = weight_decay, unfreeze_every, bn, augment
        self.temperature = temperature
        if lr_candidates is not None:
            if (not isinstance(lr_candidates, (list, tuple)) or not lr_candidates or any(
                    isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in lr_candidates)):
                raise FewshotError(f"finetune lr_candidates must be a non-empty list of numbers >= 0, got "
                                   f"{lr_candidates!r}")
            lr_candidates = sorted(float(v) for v in lr_candidates)
        if isinstance(pseudo_views, bool) or not isinstance(pseudo_views, int) or pseudo_views < 1:
            raise FewshotError(f"finetune pseudo_views must be an integer >= 1, got {pseudo_views!r}")
        self.lr_candidates, self.pseudo_views = lr_candidates, pseudo_views
        self.last_backbone_lr: float | None = None

    def check_backbone(self, backbone: nn.Module) -> None:
        stages = len(backbone.stages())
        if self.blocks > stages:
            raise FewshotError(f"finetune blocks={self.blocks} but the backbone has {stages} stages: use at most "
                               f"{stages}")

    def forward(self, support, support_labels, query, ways):
        """On features only (no backbone at hand): a cosine classifier fitted on the support features."""
        return self._fit_classifier(support.detach(), support_labels, ways)(query)

    def _new_classifier(self, support_features: torch.Tensor, labels: torch.Tensor, ways: int) -> nn.Linear:
        classifier = nn.Linear(support_features.shape[1], ways).to(support_features.device)
        with torch.no_grad():
            classifier.weight.copy_(F.normalize(class_means(support_features, labels, ways), dim=-1) * self.temperature)
            classifier.bias.zero_()
        return classifier

    def _fit_classifier(self, features, labels, ways):
        with torch.inference_mode(False), torch.enable_grad():
            features, labels = F.normalize(features.clone(), dim=-1), labels.clone()
            classifier = self._new_classifier(features, labels, ways)
            optimizer = torch.optim.Adam(classifier.parameters(), lr=self.head_lr)
            for _ in range(self.steps):
                optimizer.zero_grad()
                F.cross_entropy(classifier(features), labels).backward()
                optimizer.step()
        return lambda query: classifier(F.normalize(query.float(), dim=-1)).detach()

    def adapt(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
              query: torch.Tensor, ways: int, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> torch.Tensor:
        """Fine-tune on ``support`` ``(S, C, H, W)`` and return query logits ``(Q, ways)``; images are uint8
        (augmented as uint8, then normalized by ``prepare``) or, without augmentation, normalized floats.
        ``backbone`` is restored to its weights and buffers before returning."""
        with self.adapted(backbone, support, support_labels, ways, prepare) as network:
            with torch.no_grad():
                return network(prepare(query) if prepare is not None else query)[1]

    @contextlib.contextmanager
    def adapted(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Network]:
        """The backbone fine-tuned on ``support`` with its new classifier, valid inside the ``with`` block."""
        from episodes import train_augmentation

        augment = train_augmentation(self.augment, support.shape[-1], support.shape[1])
        if augment is not None and support.dtype != torch.uint8:
            raise FewshotError("finetune augments uint8 images: pass the support set as uint8 (it is normalized "
                               "after augmentation), or set head option augment: none")
        backbone_lr = self.backbone_lr
        if self.lr_candidates is not None:
            backbone_lr = self.choose_backbone_lr(backbone, support, support_labels, ways, prepare)
        self.last_backbone_lr = backbone_lr
        with self._finetuned(backbone, support, support_labels, ways, prepare, augment, backbone_lr) as network:
            yield network

    def pseudo_episode(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pseudo-support, its labels, pseudo-queries, their labels) cut from ``support`` ``(S, C, H, W)``
        alone, as the ``lr_candidates`` docstring describes; deterministic for a given support set."""
        from episodes import train_augmentation
        from episodes.images import apply_per_image

        counts = torch.bincount(support_labels, minlength=ways)
        if bool((counts >= 2).all()):
            first = torch.stack([torch.nonzero(support_labels == c)[0, 0] for c in range(ways)])
            keep = torch.ones(len(support), dtype=torch.bool)
            keep[first] = False
            pseudo_support, pseudo_labels = support[keep], support_labels[keep]
            sources, source_labels = support[first], support_labels[first]
            with_originals = True
        else:
            pseudo_support, pseudo_labels = support, support_labels
            sources, source_labels, with_originals = support, support_labels, False
        augment = train_augmentation("standard" if support.dtype == torch.uint8 else "none", support.shape[-1],
                                     support.shape[1])
        views = [sources] if with_originals else []
        with torch.random.fork_rng(devices=[support.device] if support.device.type == "cuda" else []):
            torch.manual_seed(int(support.float().sum().item()) % (2**31))
            for _ in range(self.pseudo_views):
                views.append(apply_per_image(augment, sources) if augment is not None else sources.flip(-1))
        return pseudo_support, pseudo_labels, torch.cat(views), source_labels.repeat(len(views))

    def choose_backbone_lr(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor,
                           ways: int, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """The candidate backbone learning rate that fine-tunes best on a pseudo-episode of ``support``."""
        from episodes import train_augmentation

        pseudo_support, pseudo_labels, pseudo_query, query_labels = self.pseudo_episode(support, support_labels, ways)
        augment = train_augmentation(self.augment, support.shape[-1], support.shape[1])
        prepare_query = prepare or (lambda images: images)
        scores = []
        for lr in self.lr_candidates:
            with self._finetuned(backbone, pseudo_support, pseudo_labels, ways, prepare, augment, lr) as network:
                with torch.no_grad():
                    log_probs = network(prepare_query(pseudo_query))[1].float().log_softmax(-1)
            accuracy = (log_probs.argmax(-1) == query_labels).float().mean().item()
            likelihood = log_probs.gather(1, query_labels[:, None]).mean().item()
            if not math.isfinite(likelihood):  # a rate that made the network diverge
                accuracy, likelihood = -1.0, -math.inf
            scores.append((accuracy, likelihood, -lr))
        return -max(scores)[2]

    @contextlib.contextmanager
    def _finetuned(self, backbone, support, support_labels, ways, prepare, augment, backbone_lr
                   ) -> Iterator[Network]:
        from episodes.images import apply_per_image

        prepare = prepare or (lambda images: images)
        saved = copy.deepcopy(backbone.state_dict())
        was_training = backbone.training
        stages = backbone.stages()
        trainable = [m for m in stages[len(stages) - self.blocks:]] if self.blocks > 0 and backbone_lr > 0 else []
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # clones: inputs made under inference_mode cannot take part in autograd
                support, support_labels = support.clone(), support_labels.clone()
                for p in backbone.parameters():
                    p.requires_grad_(False)
                backbone.eval()
                with torch.no_grad():
                    classifier = self._new_classifier(F.normalize(backbone(prepare(support)), dim=-1),
                                                      support_labels, ways)
                groups = [{"params": list(classifier.parameters()), "lr": self.head_lr}]
                unfrozen = 0 if self.unfreeze_every else len(trainable)

                def set_unfrozen(count):
                    for module in trainable[len(trainable) - count:]:
                        for p in module.parameters():
                            p.requires_grad_(True)
                        if self.bn == "train":
                            for m in module.modules():
                                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                                    m.train()

                params = [p for m in trainable for p in m.parameters()]
                if params:
                    groups.append({"params": params, "lr": backbone_lr})
                optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
                set_unfrozen(unfrozen)
                for step in range(self.steps):
                    if self.unfreeze_every and step % self.unfreeze_every == 0 and unfrozen < len(trainable):
                        unfrozen += 1
                        set_unfrozen(unfrozen)
                    images = apply_per_image(augment, support) if augment is not None else support
                    optimizer.zero_grad()
                    logits = classifier(F.normalize(backbone(prepare(images)), dim=-1))
                    F.cross_entropy(logits, support_labels).backward()
                    optimizer.step()
                backbone.eval()
                for p in list(backbone.parameters()) + list(classifier.parameters()):
                    p.requires_grad_(False)

            def network(images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
                maps = backbone.forward_features(images)
                return [maps], classifier(F.normalize(backbone.pool_features(maps), dim=-1))

            yield network
        finally:
            with torch.inference_mode(False), torch.no_grad():
                backbone.load_state_dict(saved)
            for p in backbone.parameters():
                p.requires_grad_(True)
            backbone.train(was_training)
