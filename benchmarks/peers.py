"""Import helpers for peer frameworks installed beside the project, never as its dependencies.

Install them once into ``benchmarks/.peers`` (ignored by git), without their dependencies::

    pip install --no-deps --target benchmarks/.peers easyfsl==1.5.0 pandas python-dateutil tzdata six
"""

from __future__ import annotations

import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent / ".peers"


def import_easyfsl():
    """Import easyfsl 1.5.0 from ``benchmarks/.peers``, with its TaskSampler fixed for torch >= 2.10.

    easyfsl's ``TaskSampler.__init__`` calls ``Sampler.__init__(data_source=None)``, which torch 2.10
    removed; the subclass below skips that call and is otherwise easyfsl's own code.
    """
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        import easyfsl  # noqa: F401
        from easyfsl.samplers import task_sampler
    except ImportError as exc:
        raise SystemExit(f"easyfsl is not installed ({exc}): pip install --no-deps --target {PEERS} "
                         "easyfsl==1.5.0 pandas python-dateutil tzdata six") from None

    class TaskSampler(task_sampler.TaskSampler):
        def __init__(self, dataset, n_way, n_shot, n_query, n_tasks):
            original = task_sampler.Sampler.__init__
            task_sampler.Sampler.__init__ = lambda self, *args, **kwargs: None
            try:
                super().__init__(dataset, n_way, n_shot, n_query, n_tasks)
            finally:
                task_sampler.Sampler.__init__ = original

    return easyfsl, TaskSampler
