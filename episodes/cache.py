"""Decoded-image cache: a split's images decoded once, at the target size, into a uint8 array on
disk that later runs memory-map.

**Names.** An array ``<list>-<key>.npy`` and its manifest ``<list>-<key>.json`` are named by two
hashes: ``<list>`` of the cache format, the image size, the channel count and the exact list of file
paths; ``<key>`` of that plus every file's size in bytes and modification time. Any change to a file's
size or modification time therefore gives a new name and a rebuild; a stale array is never reused.
When an array is rebuilt, the older arrays of the same file list are deleted. Splits with different
file lists (miniImageNet's train, val and test CSVs, whose images share one folder) keep their own
arrays side by side.

**Size cap.** ``$FEWSHOT_CACHE_MAX_GB`` (default 20, in gigabytes of 10^9 bytes) caps the arrays in
the cache folder: after each build, the least recently used arrays (a cache hit touches the
manifest) other than the one just built are deleted until the rest fit. Only files named like cache
arrays are ever deleted.

**Concurrency and failures.** A build holds an exclusive ``fcntl.flock`` lock on ``<list>-<key>.lock``
in the cache folder (removed when the build ends; no lock where ``fcntl`` does not exist), so
processes that open one split at once (torchrun ranks) decode it once: the others wait, find the
finished array and memory-map it. Arrays and manifests are written to temporary files and renamed, so
an interrupted build leaves nothing half-written. An unreadable manifest or array (bad JSON, wrong
fields, a truncated or wrongly shaped array) is a cache miss, rebuilt. Images are decoded in a process
pool, started with ``spawn`` instead of ``fork`` when the calling process has initialised CUDA.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.context
import os
import re
import sys
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence

import numpy as np

from .errors import CorruptImageError, EpisodesError, EpisodesWarning, preview
from .images import decode_image

try:
    import fcntl
except ImportError:  # not on Windows: builds there are not locked
    fcntl = None

CACHE_FORMAT = 3
_CHUNK = 256
_ARRAY_NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{24}\.npy$")
Failures = list[tuple[int, str]]


def default_cache_dir() -> Path:
    """``$FEWSHOT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fewshot``, else ``~/.cache/fewshot``."""
    if os.environ.get("FEWSHOT_CACHE_DIR"):
        return Path(os.environ["FEWSHOT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fewshot"


@dataclass
class DecodedImages:
    """Decoded images of a file list.

    ``pixels`` is ``(num_files, channels, size, size)`` uint8 (memory-mapped when read from the
    cache); ``valid[i]`` is False for a file skipped as corrupt (its pixels are zeros).
    """

    pixels: np.ndarray
    valid: np.ndarray
    path: Path | None


def _max_cache_bytes() -> int:
    """The cache size cap in bytes, from ``$FEWSHOT_CACHE_MAX_GB`` (default 20)."""
    raw = os.environ.get("FEWSHOT_CACHE_MAX_GB", "20")
    try:
        gigabytes = float(raw)
    except ValueError:
        gigabytes = -1.0
    if not 0 <= gigabytes < float("inf"):
        raise EpisodesError(f"FEWSHOT_CACHE_MAX_GB must be a number of gigabytes (0 or more), got '{raw}'")
    return int(gigabytes * 10**9)


def _file_stamp(path: str) -> str:
    """The size and modification time of ``path``, for the cache key.

    A file that cannot be read (a broken symbolic link, no permission) gets a stamp of its own, and
    decoding then reports it as corrupt; a file that no longer exists at all raises.
    """
    try:
        stat = os.stat(path)
        return f"{stat.st_size}\0{stat.st_mtime_ns}"
    except OSError:
        pass
    try:
        return f"unreadable\0{os.lstat(path).st_mtime_ns}"
    except FileNotFoundError:
        raise EpisodesError(f"image {path} disappeared while reading the data: re-run") from None
    except OSError:
        return "unreadable"


def _fingerprints(files: Sequence[Path], size: int, channels: int) -> tuple[str, str]:
    """(list, key): ``list`` hashes the format, size, channels and paths; ``key`` adds every file's stamp."""
    absolute = [os.path.abspath(f) for f in files]
    listing = hashlib.sha256(f"{CACHE_FORMAT}|{size}|{channels}|".encode())
    for path in absolute:
        listing.update(f"{path}\0".encode())
    file_list = listing.hexdigest()[:16]
    digest = hashlib.sha256(file_list.encode())
    for path in absolute:
        digest.update(f"{path}\0{_file_stamp(path)}\n".encode())
    return file_list, digest.hexdigest()[:24]


def _decode_chunk(args: tuple[list[str], int, int]) -> list[np.ndarray | str]:
    files, size, channels = args
    out: list[np.ndarray | str] = []
    for path in files:
        try:
            out.append(decode_image(path, size, channels))
        except CorruptImageError as exc:
            out.append(str(exc))
    return out


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """``spawn`` when this process has initialised CUDA (a forked child cannot use it), else None (the default).

    torch is looked up, not imported: a caller that never imported it has no CUDA to protect.
    """
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is not None and cuda.is_initialized():
        return multiprocessing.get_context("spawn")
    return None


def _decode_all(files: Sequence[Path], size: int, channels: int, pixels: np.ndarray,
                workers: int, progress: bool) -> Failures:
    """Decode ``files`` into ``pixels`` ``(len(files), channels, size, size)``; return (index, message) for
    every file that failed."""
    from tqdm.auto import tqdm

    chunks = [([str(f) for f in files[i:i + _CHUNK]], size, channels) for i in range(0, len(files), _CHUNK)]
    failures: Failures = []
    bar = tqdm(total=len(files), desc="decoding images", unit="img", disable=None if progress else True,
               leave=False)
    executor = ProcessPoolExecutor(workers, mp_context=_pool_context()) if workers > 1 and len(chunks) > 1 else None
    try:
        results = executor.map(_decode_chunk, chunks) if executor else map(_decode_chunk, chunks)
        for chunk_index, decoded in enumerate(results):
            start = chunk_index * _CHUNK
            for offset, item in enumerate(decoded):
                if isinstance(item, str):
                    failures.append((start + offset, item))
                else:
                    pixels[start + offset] = item.transpose(2, 0, 1)
            bar.update(len(decoded))
    finally:
        bar.close()
        if executor:
            executor.shutdown(cancel_futures=True)
    return failures


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _write_error(directory: Path, exc: OSError) -> EpisodesError:
    return EpisodesError(f"cannot write the image cache in {directory}: {exc.strerror} "
                         "(free some space or set FEWSHOT_CACHE_DIR)")


def _read_cached(array_path: Path, manifest_path: Path,
                 shape: tuple[int, int, int, int]) -> tuple[np.ndarray, Failures] | None:
    """The memory-mapped pixels and corrupt files of a finished cache entry, or None for a miss.

    A missing, unreadable or inconsistent manifest or array is a miss. A hit touches the manifest,
    which marks the entry as recently used for the size cap.
    """
    try:
        manifest = json.loads(manifest_path.read_text())
        if (manifest["files"], manifest["channels"], manifest["size"]) != shape[:3]:
            return None
        failures = [(index, message) for index, message in manifest["corrupt"]]
        if not all(type(index) is int and 0 <= index < shape[0] and isinstance(message, str)
                   for index, message in failures):
            return None
        pixels = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, TypeError, KeyError, EOFError):
        return None
    if pixels.shape != shape or pixels.dtype != np.uint8:
        return None
    try:
        os.utime(manifest_path)
    except OSError:
        pass  # a read-only cache still serves hits
    return pixels, failures


def _build(files: Sequence[Path], size: int, channels: int, array_path: Path, manifest_path: Path,
           workers: int, progress: bool) -> tuple[np.ndarray, Failures]:
    """Decode ``files`` into a new cache entry; return its memory-mapped pixels and the corrupt files."""
    shape = (len(files), channels, size, size)
    tmp = f".{array_path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_array, tmp_manifest = array_path.with_name(tmp + ".npy"), array_path.with_name(tmp + ".json")
    try:
        pixels = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=shape)
        failures = _decode_all(files, size, channels, pixels, workers, progress)
        pixels.flush()
        del pixels
        tmp_manifest.write_text(json.dumps({"files": len(files), "size": size, "channels": channels,
                                            "corrupt": failures}))
        pixels = np.load(tmp_array, mmap_mode="r")  # mapped before the rename: it survives a later eviction
        os.replace(tmp_array, array_path)
        os.replace(tmp_manifest, manifest_path)  # the manifest last: it marks the entry finished
    except OSError as exc:
        raise _write_error(array_path.parent, exc) from None
    finally:
        _remove_quietly(tmp_array)
        _remove_quietly(tmp_manifest)
    return pixels, failures


def _lock(path: Path) -> IO | None:
    """Open ``path`` and lock it exclusively, waiting for another holder; None where locks are unavailable.

    A holder removes the file when done, so after the wait the locked file must still be the one at
    ``path``; if it is not, lock the new one.
    """
    if fcntl is None:
        return None
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: build unlocked
            handle.close()
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return handle
        handle.close()


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (see :func:`_lock`), and remove it on exit."""
    try:
        handle = _lock(path)
    except OSError as exc:
        raise _write_error(path.parent, exc) from None
    try:
        yield
    finally:
        if handle is not None:
            _remove_quietly(path)
            handle.close()


def _last_used(array: Path) -> float:
    """When a cache entry was last built or hit: its manifest's modification time (else the array's)."""
    try:
        return array.with_suffix(".json").stat().st_mtime
    except FileNotFoundError:
        return array.stat().st_mtime


def _evict(directory: Path, max_bytes: int, keep: str) -> None:
    """Delete the least recently used cache arrays but ``keep`` until the arrays total ``max_bytes`` or less."""
    entries = []
    for array in directory.iterdir():
        if _ARRAY_NAME.match(array.name):
            try:
                entries.append((_last_used(array), array.stat().st_size, array))
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
    total = sum(size for _, size, _ in entries)
    for _, size, array in sorted(entries):
        if total <= max_bytes:
            break
        if array.stem != keep:
            _remove_quietly(array)
            _remove_quietly(array.with_suffix(".json"))
            total -= size


def load_decoded(files: Sequence[Path], size: int, channels: int, *, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, skip_corrupt: bool = False, workers: int | None = None,
                 progress: bool = True) -> DecodedImages:
    """Decoded pixels of ``files``, from the cache when its fingerprint matches, else decoded now.

    Returns ``pixels`` of shape ``(len(files), channels, size, size)`` uint8. A corrupt image raises
    :class:`CorruptImageError` naming it, unless ``skip_corrupt`` is set, in which case it is marked
    invalid and one warning names the skipped files.
    """
    files = list(files)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    shape = (len(files), channels, size, size)
    if not use_cache:
        pixels = np.zeros(shape, dtype=np.uint8)
        failures = _decode_all(files, size, channels, pixels, workers, progress)
        return DecodedImages(pixels, _valid_mask(files, failures, skip_corrupt), None)

    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    max_bytes = _max_cache_bytes()
    file_list, key = _fingerprints(files, size, channels)
    stem = f"{file_list}-{key}"
    array_path, manifest_path = directory / f"{stem}.npy", directory / f"{stem}.json"
    cached = _read_cached(array_path, manifest_path, shape)
    if cached is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EpisodesError(f"cannot create the image cache folder {directory}: {exc.strerror} "
                                "(set FEWSHOT_CACHE_DIR or data.cache_dir to a writable folder)") from None
        with _build_lock(directory / f"{stem}.lock"):
            cached = _read_cached(array_path, manifest_path, shape)  # built by another process while we waited?
            if cached is None:
                cached = _build(files, size, channels, array_path, manifest_path, workers, progress)
                for older in directory.glob(f"{file_list}-*"):  # the same files, since changed
                    if older.stem != stem and older.suffix in (".npy", ".json"):
                        _remove_quietly(older)
                _evict(directory, max_bytes, keep=stem)
    pixels, failures = cached
    return DecodedImages(pixels, _valid_mask(files, failures, skip_corrupt), array_path)


def _valid_mask(files: Sequence[Path], failures: Failures, skip_corrupt: bool) -> np.ndarray:
    valid = np.ones(len(files), dtype=bool)
    if not failures:
        return valid
    if not skip_corrupt:
        raise CorruptImageError(
            f"{failures[0][1]}; fix or delete it, or pass --skip-corrupt (data.skip_corrupt: true) to leave "
            f"corrupt images out" + (f" ({len(failures)} corrupt images in all)" if len(failures) > 1 else "")
        )
    names = [Path(files[i]).name for i, _ in failures]
    warnings.warn(f"skipped {len(failures)} corrupt images: {preview(names)}", EpisodesWarning, stacklevel=3)
    valid[[i for i, _ in failures]] = False
    return valid
