"""Optimizer and learning-rate schedule, built the same way for ``fewshot train`` and ``fewshot pretrain``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class Schedule:
    """Learning-rate multiplier per optimizer step: linear warm-up over ``warmup`` steps, then
    ``constant``, ``step`` (times ``gamma`` every ``step_size`` steps) or ``cosine`` decay to 0 at ``total``."""

    kind: str
    total: int
    warmup: int = 0
    step_size: int = 1
    gamma: float = 0.5

    def factor(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "step":
            return self.gamma ** (step // self.step_size)
        if self.kind == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0


def build_optimizer(name: str, parameters: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``adam`` or ``sgd`` (Nesterov momentum when ``momentum > 0``; plain SGD at ``momentum: 0``)."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=momentum > 0)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped once per optimizer step, following ``schedule``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
