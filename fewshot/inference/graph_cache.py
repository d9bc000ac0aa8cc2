"""Converted embedding graphs kept on disk, so that a model converted once on this machine is not converted again
by the next process (a CLI call, a notebook restart): the TorchScript-based ONNX exporter takes 0.2-0.7 s for
EfficientNet-Lite0 (most of it the exporter's first use in a process), reading the kept graph about 20 ms.

A graph is found by :func:`graph_key`: the digest of every parameter and buffer, the module's structure, the input
shape, torch's and this package's versions and the caller's own description. ``$FEWSHOT_CACHE_DIR/graphs`` (see
:func:`episodes.default_cache_dir`) holds at most :data:`MAX_GRAPHS`, the least recently used removed first; a cache
that cannot be written is skipped silently (the graph is made in memory as before); ``FEWSHOT_GRAPH_CACHE=0``
turns it off."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from episodes import default_cache_dir

from ..atomic import atomic_write
from ..version import __version__

MAX_GRAPHS = 8


def graph_key(model: nn.Module, shape: tuple[int, ...], description: str) -> str:
    """Digest of ``model``'s weights (every parameter and buffer, bytes and dtype), its structure (``repr``), the
    input ``shape`` and ``description`` (what the graph computes and how it was made)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{torch.__version__}|{__version__}|{shape}|{description}|{model!r}".encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        data = tensor.detach().cpu().reshape(-1).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def graph_folder() -> Path | None:
    """Where graphs are kept, or None when the cache is turned off."""
    if os.environ.get("FEWSHOT_GRAPH_CACHE", "1") == "0":
        return None
    return default_cache_dir() / "graphs"


def cached_graph(key: str, make: Callable[[], bytes]) -> bytes:
    """The graph kept under ``key``, else ``make()``, kept for the next process."""
    folder = graph_folder()
    if folder is None:
        return make()
    path = folder / f"{key}.onnx"
    try:
        data = path.read_bytes()
        os.utime(path)  # recently used: removed last
        return data
    except OSError:
        pass
    data = make()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda out: out.write(data))
        keep_newest(folder, MAX_GRAPHS)
    except OSError:
        pass  # a read-only or full cache: the graph in memory is all that is needed
    return data


def keep_newest(folder: Path, count: int) -> None:
    """Remove all but the ``count`` most recently used graphs in ``folder``."""
    graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[count:]:
        old.unlink(missing_ok=True)


__all__ = ["MAX_GRAPHS", "cached_graph", "graph_folder", "graph_key", "keep_newest"]
