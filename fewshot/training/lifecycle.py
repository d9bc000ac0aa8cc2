"""One run lifecycle for ``fewshot train`` and ``fewshot pretrain``.

:class:`~.run_directory.RunDirectory` owns the run folder: it is checked before any work (writable, enough free space,
not another run or a foreign folder), then receives ``config.yaml``, ``metrics.jsonl`` (append-only,
synced line by line), ``checkpoints/last.pt`` and ``best.pt`` (atomic), ``curves.png`` and
``summary.json``. :func:`run_steps` is the loop both commands share: one optimizer step per item of
``job.batches``, a NaN/Inf check before the weights are touched, a metrics line every ``log_every``
steps, validation (:mod:`.validation`; best/last checkpoints, early stopping) every ``val_every`` steps, periodic
checkpoints, and SIGTERM / SIGINT turned into "save ``last.pt`` and stop". Everything an exact
``--resume`` needs (weights, optimizer, scheduler, counters, log window, torch's random state) is in
``last.pt``; under torchrun every rank takes part and rank 0 alone writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..config import Config
from ..errors import FewshotError
from .distributed import DistContext, all_sum, any_rank, broadcast_flag, init_distributed, shutdown
from .run_directory import RunDirectory, StopRequest


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
