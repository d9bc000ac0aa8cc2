"""One run lifecycle for ``fewshot train`` and ``fewshot pretrain``.

:class:`RunDirectory` owns the run folder: it is checked before any work (writable, enough free space,
not another run or a foreign folder), then receives ``config.yaml``, ``metrics.jsonl`` (append-only,
synced line by line), ``checkpoints/last.pt`` and ``best.pt`` (atomic), ``curves.png`` and
``summary.json``. :func:`run_steps` is the loop both commands share: one optimizer step per item of
``job.batches``, a NaN/Inf check before the weights are touched, a metrics line every ``log_every``
steps, validation (best/last checkpoints, early stopping) every ``val_every`` steps, periodic
checkpoints, and SIGTERM / SIGINT turned into "save ``last.pt`` and stop". Everything an exact
``--resume`` needs (weights, optimizer, scheduler, counters, log window, torch's random state) is in
``last.pt``; under torchrun every rank takes part and rank 0 alone writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .. import json_io
from ..atomic import atomic_write_text, writable_folder
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, dump_config
from .distributed import DistContext, all_sum, any_rank, broadcast_flag, init_distributed, shutdown
from ..errors import FewshotError
from .loggers import open_loggers
from ..plots import plot_training_curves

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


class TrainingState:
    """Everything besides the weights that an exact resume needs: counters, best result, log window."""

    def __init__(self):
        self.step = 0
        self.best = {"accuracy": -1.0, "ci95": 0.0, "episode": 0}
        self.world_size = 1  # processes the run trains with (checked on resume)
        self.stale = 0
        self.window = [0.0, 0.0, 0.0, 0.0]  # loss sum, correct, queries, steps
        self.earlier_seconds = 0.0  # training time of the processes before a resume
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Training time so far, across resumes."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def to_dict(self) -> dict:
        return {"episode": self.step, "world_size": self.world_size, "best": self.best, "stale": self.stale,
                "window": self.window,
                "seconds": self.seconds()}

    def load(self, saved: dict) -> None:
        self.step, self.best, self.stale = saved["episode"], saved["best"], saved.get("stale", 0)
        self.window = saved.get("window", [0.0, 0.0, 0.0, 0.0])
        self.earlier_seconds = saved.get("seconds", 0.0)


@dataclass
class Job:
    """What a training command hands to :func:`run_steps`.

    ``forward(batch)`` -> (loss tensor, correct predictions, predictions) without touching the weights;
    ``where(batch)`` names a batch in the NaN message; ``validate()`` -> an
    :class:`~fewshot.evaluation.episodic.EvalResult` (rank 0 only); ``modules`` are saved by name in checkpoints
    (``model`` first); ``extra`` is added to every checkpoint.
    """

    config: Config
    modules: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    forward: Callable[[Any], tuple[torch.Tensor, int, int]]
    where: Callable[[Any], str]
    total: int
    log_every: int
    val_every: int = 0
    validate: Callable[[], Any] | None = None
    grad_clip: float | None = None
    patience: int | None = None
    checkpoint_every: int = 0
    checkpoint_minutes: float = 0.0
    unit: str = "episode"
    label: Callable[[int], str] = lambda step: f"episode {step}"
    record: Callable[[int], dict] = lambda step: {}
    extra: dict = field(default_factory=dict)


def checkpoint_state(job: Job, state: TrainingState, device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    model = job.modules["model"]
    normalization = {"normalization": [list(model.mean), list(model.std)]} if hasattr(model, "mean") else {}
    return {"config": job.config.to_dict(), **{name: m.state_dict() for name, m in job.modules.items()},
            **normalization,
            "optimizer": job.optimizer.state_dict(), "scheduler": job.scheduler.state_dict(), "rng": rng,
            **job.extra, **state.to_dict()}


def restore(job: Job, state: TrainingState, saved: dict, device: torch.device) -> None:
    """Put a run back exactly where ``saved`` (its ``last.pt``) left it."""
    for name, module in job.modules.items():
        module.load_state_dict(saved[name])
    job.optimizer.load_state_dict(saved["optimizer"])
    job.scheduler.load_state_dict(saved["scheduler"])
    state.load(saved)
    torch.set_rng_state(saved["rng"]["torch"])
    if device.type == "cuda" and saved["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(saved["rng"]["cuda"], device)


def begin(job: Job, run: RunDirectory, saved: dict | None, context: DistContext, device: torch.device,
          log: Callable[[str], None]) -> TrainingState:
    """A new training state, or the one ``saved`` (``last.pt``) holds with everything restored; then the run
    directory is started and the modules put in training mode."""
    state = TrainingState()
    if saved is not None:
        restore(job, state, saved, device)
        if context.is_main:
            log(f"resumed {run.path} after {job.label(state.step)}")
    state.world_size = context.world_size
    run.start(job.config)
    for module in job.modules.values():
        module.train()
    return state


def _update(job: Job, loss: torch.Tensor) -> None:
    job.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if job.grad_clip:
        parameters = [p for group in job.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, job.grad_clip)
    job.optimizer.step()
    job.scheduler.step()


def _log_window(job: Job, run: RunDirectory, state: TrainingState, context: DistContext, device: torch.device,
                bar) -> None:
    loss_sum, correct, predictions, count = all_sum(state.window, context, device)
    record = {"kind": "train", "episode": state.step, **job.record(state.step), "loss": loss_sum / count,
              "accuracy": 100.0 * correct / predictions, "lr": job.optimizer.param_groups[0]["lr"],
              "seconds": state.seconds()}
    state.window = [0.0, 0.0, 0.0, 0.0]
    if run.is_main:
        run.write_metrics(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.1f}", lr=f"{record['lr']:.2g}")


def _validate(job: Job, run: RunDirectory, state: TrainingState, context: DistContext, device: torch.device,
              bar) -> bool:
    """Validate on rank 0, keep best/last; True when every rank should stop early."""
    stop = False
    if run.is_main:
        result = job.validate()
        per_source = {name: r.accuracy for name, r in getattr(result, "results", {}).items()}
        open_set = getattr(result, "extra", {}).get("open_set")
        run.write_metrics({"kind": "val", "episode": state.step, **job.record(state.step),
                           "accuracy": result.accuracy, "ci95": result.ci95,
                           **({"sources": per_source} if per_source else {}),
                           **({"auroc": open_set["auroc"], "auroc_ci95": open_set["auroc_ci95"]}
                              if open_set else {})})
        unseen = (f"; unseen vs known AUROC {open_set['auroc']:.2f} ± {open_set['auroc_ci95']:.2f} %"
                  if open_set else "")
        bar.write(f"{job.label(state.step)}: validation {result.summary()}{unseen}")
        if result.accuracy > state.best["accuracy"]:
            state.best = {"accuracy": result.accuracy, "ci95": result.ci95, "episode": state.step,
                          **job.record(state.step)}
            state.stale = 0
            run.save("best.pt", checkpoint_state(job, state, device))
        else:
            state.stale += 1
        run.save("last.pt", checkpoint_state(job, state, device))
        stop = bool(job.patience and state.stale >= job.patience)
        if stop:
            bar.write(f"stopping early: no validation improvement in {state.stale} validations")
    return broadcast_flag(stop, context, device)


def run_steps(job: Job, batches: Iterable, run: RunDirectory, state: TrainingState, context: DistContext,
              device: torch.device, progress: bool = True) -> dict:
    """Train from ``state.step`` to ``job.total``; return ``{"stopped_early", "interrupted", "first"}``."""
    from tqdm.auto import tqdm

    validating = job.validate is not None and job.val_every > 0
    stopped_early, interrupted, first = False, None, []
    state.started = last_saved = time.perf_counter()
    bar = tqdm(total=job.total, initial=state.step, desc="training", unit=job.unit,
               disable=None if progress and run.is_main else True)
    try:
        with StopRequest() as stop:
            for batch in batches:
                if len(first) < 4:
                    first.append(getattr(batch, "index", state.step))
                loss, correct, count = job.forward(batch)
                if any_rank(not bool(torch.isfinite(loss)), context, device):
                    last = run.checkpoints / "last.pt"
                    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
                    raise FewshotError(f"loss became {loss.item()} at {job.unit} {state.step + 1} ({job.where(batch)}"
                                       f"); {kept}; lower the learning rate or set a gradient clip")
                _update(job, loss)
                state.step += 1
                state.window = [a + b for a, b in zip(state.window, (loss.item(), correct, count, 1))]
                bar.update(1)
                if state.step % job.log_every == 0 or state.step == job.total:
                    _log_window(job, run, state, context, device, bar)
                saved = False
                if validating and (state.step % job.val_every == 0 or state.step == job.total):
                    saved = True
                    if _validate(job, run, state, context, device, bar):
                        stopped_early = True
                        break
                due = (job.checkpoint_every and state.step % job.checkpoint_every == 0) or (
                    job.checkpoint_minutes and time.perf_counter() - last_saved > 60 * job.checkpoint_minutes)
                if due and not saved:
                    run.save("last.pt", checkpoint_state(job, state, device))
                    saved = True
                if saved:
                    last_saved = time.perf_counter()
                if any_rank(stop.signal is not None, context, device):
                    interrupted = stop.signal or "signal on another rank"
                    run.save("last.pt", checkpoint_state(job, state, device))
                    break
    finally:
        bar.close()
        run.close()
    if not interrupted:
        run.save("last.pt", checkpoint_state(job, state, device))
        if state.best["accuracy"] < 0:  # never validated: the final weights are the best we know
            run.save("best.pt", checkpoint_state(job, state, device))
    return {"stopped_early": stopped_early, "interrupted": interrupted, "first": first}


def launch(body: Callable[..., dict], config: Config, run_dir: str | os.PathLike, resume: bool, progress: bool,
           log: Callable[[str], None]) -> dict:
    """Join the torchrun process group if any, then ``body(config, run, progress, log, context, device)``."""
    context, device = init_distributed(config.train.device)
    finished = False
    try:
        result = body(config, RunDirectory(run_dir, resume, context.is_main), progress, log, context, device)
        finished = True
        return result
    finally:
        shutdown(context, finished)


VAL_SEED_OFFSET = 1_000_003  # validation episodes are a fixed set, distinct from the training stream


def validation(model: torch.nn.Module, config: Config, episodes: int, context: DistContext, device: torch.device,
               progress: bool, run: RunDirectory | None = None) -> Callable[[], Any] | None:
    """A function that validates ``model`` on the config's val split(s), or None when there is none. The
    episodes (``episodes`` per source, by ``data.protocol``) are the same at every validation: drawn at the
    first one and saved in the run directory as ``val_episodes.jsonl`` (read back on resume). Only rank 0
    opens the splits."""
    from ..evaluation.data import check_head_ways, episode_sampler, open_source, phase_sources
    from ..evaluation.episode_sets import validation_episodes
    from ..evaluation.episodic import evaluate_sources

    sources = phase_sources(config.data, "val", required=False)
    if not sources:
        return None
    ecfg = config.eval
    shape = (ecfg.ways, ecfg.shots, ecfg.queries)
    opened = [(s, open_source(config, s, shape, progress)) for s in sources] if context.is_main else []
    for source, split in opened:  # before training starts, not at the first validation
        check_head_ways(model.head, episode_sampler(config, split, shape, 0), source.name or source.spec.describe())
        check_open_set_validation(model, config, split, source.name or source.spec.describe())
    sets: list = []

    def validate():
        if not sets:
            path = run.path / "val_episodes.jsonl" if run is not None and run.is_main else None
            sets.extend(validation_episodes(config, opened, shape, episodes, config.seed + VAL_SEED_OFFSET, path))
        result = evaluate_sources(model, sets, seed=config.seed + VAL_SEED_OFFSET, device=device,
                                  batch_size=ecfg.batch_size, progress=False,
                                  precision="auto" if config.train.amp else "fp32", runtime=ecfg.runtime)
        if ecfg.open_set:
            from ..evaluation.open_set import evaluate_open_set

            for (_, split), part in zip(opened, getattr(result, "results", {"": result}).values()):
                found = evaluate_open_set(model, split, *shape, episodes, ecfg.open_set,
                                          config.seed + VAL_SEED_OFFSET, device, ecfg.batch_size, False, ecfg.runtime,
                                          ecfg.unknown_score, config.model.temperature).extra["open_set"]
                part.extra["open_set"] = {k: v for k, v in found.items() if k != "per_episode_auroc"}
        return result

    return validate


def check_open_set_validation(model: torch.nn.Module, config: Config, split, where: str) -> None:
    """With ``eval.open_set``, before training starts: the head can score unknowns and the split has the classes."""
    if not config.eval.open_set:
        return
    from ..model.capabilities import require

    require(model, "open_set")
    need = config.eval.ways + config.eval.open_set
    if len(split.class_sizes) < need:
        raise FewshotError(f"eval.open_set={config.eval.open_set}: validation episodes need {config.eval.ways} "
                           f"known + {config.eval.open_set} unseen classes, {where} has {len(split.class_sizes)}")
