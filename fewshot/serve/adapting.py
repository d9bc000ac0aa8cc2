"""A project that adapts the backbone to its images (the project's ``adapt`` setting, :mod:`fewshot.inference.adaptation`):
the adaptation runs as a background job while predictions are answered at their idle latency.

Adapting takes tens of seconds on a CPU (160 training steps for 5 x 5 images: the adapted model, then the three
folds its estimate and calibration read). The job holds the :class:`~.jobs.ComputeLock` for one training step at
a time (:class:`Paced`), so a prediction waits for at most one step; until the job ends, the project's predictions
come from the frozen model, and say so (:meth:`AdaptationJob.to_json`). One job runs at a time (the others wait
their turn); a job whose examples or setting changed is cancelled at its next step.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from .jobs import Cancelled, ComputeLock

log = logging.getLogger("fewshot.serve")
STATES = ("waiting", "adapting", "adapted", "not adapted", "failed", "cancelled")


class Paced:
    """A long computation as a chain of background passes: entered, it holds one pass; :meth:`step` ends it and
    waits for the next (predictions waiting meanwhile go first), raising :class:`~.jobs.Cancelled` once
    ``cancel`` is set."""

    def __init__(self, compute: ComputeLock, cancel: threading.Event):
        self.compute, self.cancel = compute, cancel
        self._pass = None

    def _enter(self) -> None:
        held = self.compute.background(self.cancel)
        held.__enter__()
        self._pass = held

    def _leave(self) -> None:
        held, self._pass = self._pass, None
        if held is not None:
            held.__exit__(None, None, None)

    def step(self) -> None:
        self._leave()
        self._enter()

    def __enter__(self) -> "Paced":
        self._enter()
        return self

    def __exit__(self, *exc) -> None:
        self._leave()


@dataclass
class AdaptationJob:
    """One adaptation of a project's classifier: its ``setting`` (``top`` or ``auto``), the project ``revision``
    it adapts to, progress in training ``steps``, and the adapted classifier once ``state`` is ``adapted`` or
    ``not adapted`` (``auto`` measured no gain: the frozen model's answers, with the decision's reason)."""

    setting: str
    revision: int
    steps: int
    done: int = 0
    state: str = "waiting"
    reason: str = ""
    classifier: object = None  # the FewShotClassifier predictions use once finished
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state in ("adapted", "not adapted")

    def to_json(self) -> dict:
        """``{adapt, state, steps_done, steps, reason}``; ``answers_from``: which model predictions use now."""
        return {"adapt": self.setting, "state": self.state, "steps_done": min(self.done, self.steps),
                "steps": self.steps, "reason": self.reason,
                "answers_from": "adapted" if self.state == "adapted" else "frozen"}

    def run(self, turn: threading.Lock, compute: ComputeLock, make: Callable[[], object]) -> None:
        """Adapt (in a worker thread): wait for ``turn``, build the classifier with ``make()``, then adapt it and
        make its folds one training step per background pass. Never raises: the outcome is in ``state``."""
        try:
            with turn:
                if self.cancel.is_set():
                    raise Cancelled()
                self.state = "adapting"
                classifier = make()
                with Paced(compute, self.cancel) as paced:
                    def step_done() -> None:
                        self.done += 1
                        paced.step()

                    found = classifier.adapt_and_validate(step_done)
                    paced.step()
                    _ = classifier.fitted_  # fitted (and calibrated from the folds) in a pass of its own
                self.classifier, self.done = classifier, self.steps
                self.reason = found.describe().get("reason", "")
                self.state = "adapted" if found.adapted else "not adapted"
        except Cancelled:
            self.state = "cancelled"
        except Exception as exc:  # the job runs for nobody's request: say it on the project, log the rest
            log.exception("adapting a project's classifier failed")
            self.state, self.reason = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__


__all__ = ["AdaptationJob", "Paced", "STATES"]
