"""A training run's folder: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` and ``summary.json`` written as the
run goes (:class:`RunDirectory`, :class:`MetricsLog`), what a resume may change (:func:`config_differences`), and a
stop asked for by a signal (:class:`StopRequest`), honoured between two steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Callable

import torch

from .. import json_io
from ..atomic import atomic_write_text, writable_folder
from ..config import Config, dump_config
from ..errors import FewshotError
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..plots import plot_training_curves
from .loggers import open_loggers


RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "summary.json")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        full = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and not full.endswith("_options"):
            keys += config_differences(a, b, full + ".")
        elif a != b:
            keys.append(full)
    return keys


def _get(config_dict: dict, dotted: str):
    node = config_dict
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class MetricsLog:
    """Append-only JSON-lines log; each line is flushed and synced when written.

    On resume, records for steps already logged are not written again (a resumed run recomputes
    them identically), and a line cut short by a kill is dropped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.logged: dict[str, int] = {}
        if path.exists():
            text = path.read_text()
            complete = text[: text.rfind("\n") + 1]
            if complete != text:
                path.write_text(complete)
            for line in complete.splitlines():
                record = json.loads(line)
                self.logged[record["kind"]] = max(self.logged.get(record["kind"], 0), record["episode"])
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> bool:
        """Append ``record``; False when a resumed run had already logged its step (nothing written)."""
        if record["episode"] <= self.logged.get(record["kind"], -1):
            return False
        self.handle.write(json_io.dumps(record) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return True

    def close(self) -> None:
        self.handle.close()


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.signal: str | None = None
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class RunDirectory:
    """The folder of one training run (see the module docstring); ``is_main`` is False on ranks > 0,
    which check nothing on disk and write nothing."""

    def __init__(self, path: str | os.PathLike, resume: bool = False, is_main: bool = True):
        self.path, self.resume, self.is_main = Path(path), resume, is_main
        self.checkpoints = self.path / "checkpoints"
        self.metrics: MetricsLog | None = None
        self.loggers: list = []  # mirrors of the metrics (train.loggers, fewshot.training.loggers)

    def check(self, model: torch.nn.Module) -> None:
        """Before any work: resumable (or new), not a foreign folder, writable, room for two checkpoints."""
        has_checkpoint = (self.checkpoints / "last.pt").exists()
        if self.resume and not has_checkpoint:
            raise FewshotError(f"--resume: {self.path} has no checkpoints/last.pt to resume from")
        if not self.resume and has_checkpoint:
            raise FewshotError(f"{self.path} already holds a run: pass --resume to continue it, or choose another "
                               "--out")
        if not self.is_main:
            return
        if self.path.is_dir() and not self.resume:
            contents = [p.name for p in self.path.iterdir()]
            if contents and not any(name in RUN_MARKERS for name in contents):
                raise FewshotError(f"{self.path} is a folder that holds other files ({', '.join(sorted(contents)[:3])}"
                                   f"{', ...' if len(contents) > 3 else ''}), not a run directory: choose a new or "
                                   "empty --out")
        existing, problem = writable_folder(self.path)
        if problem:
            raise FewshotError(f"run directory {self.path} cannot be created or written ({problem}): choose "
                               "another --out")
        need = 2 * 3 * sum(p.numel() * p.element_size() for p in model.parameters()) + 16 * 2**20
        free = shutil.disk_usage(existing).free
        if free < need:
            raise FewshotError(f"only {free / 2**20:.0f} MB free on the disk of {self.path}, checkpoints need about "
                               f"{need / 2**20:.0f} MB: free some space or choose another --out")

    def resume_point(self, config: Config, must_match: tuple[str, ...], total_key: str, total_steps: int,
                     log: Callable[[str], None], unit: str = "episode", world_size: int = 1) -> dict:
        """``last.pt``, after checking that the config did not change in a way that matters, that the run has
        not already gone past the ``total_steps`` now asked for (``total_key`` names that setting), and that it
        resumes with as many processes as it ran with (data is dealt out by step and rank: another count would
        skip or repeat data)."""
        saved = load_checkpoint(self.checkpoints / "last.pt")
        before = saved.get("world_size", 1)
        if before != world_size:
            raise FewshotError(f"cannot resume {self.path}: it ran with {before} process{'es' if before > 1 else ''} "
                               f"and is resumed with {world_size}; resume with torchrun --nproc_per_node={before} "
                               "(each step's data depends on the number of processes)")
        changed = config_differences(saved["config"], config.to_dict())
        fatal = [key for key in changed if any(key == m or key.startswith(m + ".") for m in must_match)]
        if fatal:
            key = fatal[0]
            raise FewshotError(f"cannot resume {self.path}: {key} changed from {_get(saved['config'], key)!r} to "
                               f"{_get(config.to_dict(), key)!r}; start a new run (another --out) instead")
        if total_steps < saved["episode"]:
            raise FewshotError(f"cannot resume {self.path}: it has already trained {saved['episode']} {unit}s, more "
                               f"than {total_key}={_get(config.to_dict(), total_key)} asks for; raise {total_key} "
                               "or use the run as it is")
        if changed and self.is_main:
            log(f"resuming with changed settings: {', '.join(changed)}")
        return saved

    def start(self, config: Config) -> None:
        """Create the folder, write ``config.yaml`` and open the metrics log (rank 0)."""
        if not self.is_main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", dump_config(config))
        if not self.resume:  # a run stopped before its first checkpoint may have left files: start afresh
            for name in ("metrics.jsonl", "val_episodes.jsonl"):  # validation episodes belong to their run
                (self.path / name).unlink(missing_ok=True)
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.loggers = open_loggers(config.train.loggers, self.path)

    def write_metrics(self, record: dict) -> None:
        if self.metrics and self.metrics.write(record):
            for logger in self.loggers:
                logger.write(record)

    def save(self, name: str, state: dict) -> None:
        if self.is_main:
            save_checkpoint(self.checkpoints / name, state)

    def finish(self, summary: dict) -> None:
        """``curves.png`` and ``summary.json``."""
        if self.is_main:
            plot_training_curves(self.path / "metrics.jsonl", self.path / "curves.png")
            atomic_write_text(self.path / "summary.json", json_io.dumps(summary, indent=2))

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
            self.metrics = None
        for logger in self.loggers:
            logger.close()
        self.loggers = []
