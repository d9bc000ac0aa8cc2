"""Device choice, seeding and mixed precision: the few lines every command shares."""

from __future__ import annotations

import contextlib
import functools
import random
from pathlib import Path

import numpy as np
import torch

from .errors import FewshotError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are accepted, and
    anything else (``mps``, ``meta``, an unavailable GPU) is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise FewshotError(f"device '{name}' is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FewshotError(f"device '{name}' asked for, but no CUDA GPU is available: use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FewshotError(f"device '{name}' asked for, but only {torch.cuda.device_count()} GPUs are visible")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (``/proc/cpuinfo``; empty where it cannot be read), read once."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def has_int8_dot_product() -> bool:
    """Whether the CPU has VNNI, 8-bit dot products without saturation (``avx512_vnni``, ``avx_vnni``, AMX)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


PRECISIONS = ("auto", "fp32", "bf16")


def autocast(device: torch.device, precision: str | bool = "auto"):
    """Mixed precision for a block: ``auto`` (or True) is bfloat16 autocast on CUDA and float32 on the
    CPU; ``bf16`` is bfloat16 autocast on any device (about 2x faster convolutions on CPUs with
    AVX512-BF16 or AMX, at bfloat16 accuracy); ``fp32`` (or False) is no autocast."""
    precision = {True: "auto", False: "fp32"}.get(precision, precision)
    if precision not in PRECISIONS:
        raise FewshotError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
