"""Atomic file writes: write a temporary file beside the target, flush, fsync, rename.

A reader (or a crash at any moment) sees either the old file or the complete new one, never a
half-written file; a failed write removes its temporary file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, IO

from .errors import FewshotError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file, then move it to ``path``. Concurrent writers of
    one target (threads or processes) each get their own temporary file; the last rename wins, whole."""
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, handle = _temporary_beside(target)
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise FewshotError(f"cannot write {target}: {exc.strerror or exc} (check free space and permissions); "
                           "the previous file, if any, is intact") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return target


def _temporary_beside(target: Path) -> tuple[Path, IO[bytes]]:
    """A new file ``.NAME.RANDOM.tmp`` in ``target``'s folder, open for writing. Created exclusively under a
    random name as :func:`tempfile.mkstemp` does (never another writer's file), but with the mode ``open``
    gives (0o666 less the umask): the rename keeps it, and mkstemp's 0o600 would make every file private."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return tmp, os.fdopen(descriptor, "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def writable_folder(path: Path) -> tuple[Path, str | None]:
    """The nearest existing folder at or above ``path``, and why a file cannot be created there (None when
    it can). The check is a real write, not ``os.access``: root passes access checks on read-only or
    virtual file systems such as /proc."""
    import tempfile

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return existing, f"{exc.strerror or exc} in {existing}"
    return existing, None


def check_output(path: str | os.PathLike, flag: str, folder: bool = False) -> Path:
    """Before any work: ``path`` (a file, or a folder when ``folder``) can be written; a file's folder must
    exist (an output folder is created). Raises a one-line error naming ``flag`` otherwise, so a bad output path
    never throws away a finished computation."""
    target = Path(path).expanduser()
    if not folder and target.is_dir():
        raise FewshotError(f"{flag} {target} is a folder: give a file name")
    if not folder and not target.parent.is_dir():
        raise FewshotError(f"{flag} {target}: the folder {target.parent} does not exist (a mistyped path would "
                           "create it): create it first or choose another path")
    if folder and target.exists() and not target.is_dir():
        raise FewshotError(f"{flag} {target} is a file: give a folder")
    _, problem = writable_folder(target if folder and target.is_dir() else target.parent)
    if problem:
        raise FewshotError(f"{flag} {target} cannot be written ({problem}): choose another path")
    return target
