"""Experiment loggers that mirror ``metrics.jsonl`` (which stays the record): ``tensorboard`` writes every
numeric value of every record as a TensorBoard scalar through ``torch.utils.tensorboard`` (``pip install
'fewshot[tensorboard]'``), tagged ``<kind>/<key>`` (``train/loss``, ``train/lr``, ``val/accuracy``,
``val/ci95``, ``val/auroc``...) and per source ``<kind>/<source>/accuracy`` for Meta-Dataset runs, at the
record's step: its ``episode`` (for ``fewshot pretrain``, the batch; the epoch is a scalar of its own)."""

from __future__ import annotations

import importlib.util
import numbers
from pathlib import Path

from ..errors import FewshotError

LOGGERS = ("tensorboard",)
MISSING = "train.loggers: tensorboard needs the tensorboard package: pip install 'fewshot[tensorboard]'"


def check_loggers(names: list[str]) -> None:
    """One-line errors for unknown logger names and missing packages (before any training)."""
    for name in names:
        if name not in LOGGERS:
            raise FewshotError(f"train.loggers: unknown logger '{name}'; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise FewshotError(MISSING)


class TensorBoardLog:
    """Scalars of each metrics record in ``folder`` (TensorBoard event files)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FewshotError(MISSING) from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict) -> None:
        kind, step = record.get("kind", "metrics"), int(record.get("episode", 0))
        for key, value in record.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and key != "episode":
                self.writer.add_scalar(f"{kind}/{key}", float(value), step)
            elif key == "sources" and isinstance(value, dict):
                for source, accuracy in value.items():
                    self.writer.add_scalar(f"{kind}/{source}/accuracy", float(accuracy), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_loggers(names: list[str], folder: Path) -> list[TensorBoardLog]:
    """The loggers ``names`` (checked) writing under ``folder``."""
    check_loggers(names)
    return [TensorBoardLog(folder / name) for name in names]


__all__ = ["LOGGERS", "TensorBoardLog", "check_loggers", "open_loggers"]
