"""Reading PyTorch files safely: tensors and plain values only (the ground floor: everything may use it)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import FewshotError


def load_tensors(file: str | Path) -> Any:
    """``torch.load(file, weights_only=True)`` on the CPU, memory-mapped when the file's format allows (torch's zip
    format: tensors are read from the page cache as they are used, not copied into memory first)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(file, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped


def safe_load(file: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain Python values only, so a file can never
    run code while it is read. Anything else is a one-line error that does not suggest loosening this."""
    try:
        return load_tensors(file)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle torch can read at all
            raise FewshotError(f"cannot read {what} {file}: not a PyTorch file, or a damaged one (re-save or "
                               "re-download it)") from None
        raise FewshotError(f"refused to read {what} {file}: it holds the Python object {found.group(1)}, and "
                           "loading objects other than tensors and plain values could run code; use a file saved "
                           "by fewshot or a plain state dict") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise FewshotError(f"cannot read {what} {file}: {reason} (is it a PyTorch file, complete and "
                           "uncorrupted?)") from None
