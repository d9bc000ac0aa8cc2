"""Decoded-image cache: a split's images decoded once, at the target size, into a uint8 array on
disk that later runs memory-map.

The cache file is named by a fingerprint of the image size, the channel count and, for every
file, its path, size in bytes and modification time. Any change to the file list, a file's size or
its modification time therefore gives a new name and a rebuild; a stale array is never reused. Older
arrays built from the same folder are deleted when their replacement is written. Arrays are written
to a temporary file and renamed, so an interrupted build leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CorruptImageError, EpisodesError, EpisodesWarning, preview
from .images import decode_image

CACHE_FORMAT = 2
_CHUNK = 256


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


def _fingerprints(files: Sequence[Path], size: int, channels: int) -> tuple[str, str]:
    """(group, key): group names the folder and format, key adds every file's path, size, mtime."""
    absolute = [os.path.abspath(f) for f in files]
    common = os.path.commonpath(absolute) if absolute else ""
    group = hashlib.sha256(f"{CACHE_FORMAT}|{size}|{channels}|{common}".encode()).hexdigest()[:16]
    digest = hashlib.sha256(group.encode())
    for path in absolute:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise EpisodesError(f"image {path} disappeared while reading the data: re-run") from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return group, digest.hexdigest()[:24]


def _decode_chunk(args: tuple[list[str], int, int]) -> list[np.ndarray | str]:
    files, size, channels = args
    out: list[np.ndarray | str] = []
    for path in files:
        try:
            out.append(decode_image(path, size, channels))
        except CorruptImageError as exc:
            out.append(str(exc))
    return out


def _decode_all(files: Sequence[Path], size: int, channels: int, pixels: np.ndarray,
                workers: int, progress: bool) -> list[tuple[int, str]]:
    """Decode ``files`` into ``pixels``; return (index, message) for every file that failed."""
    from tqdm.auto import tqdm

    chunks = [([str(f) for f in files[i:i + _CHUNK]], size, channels) for i in range(0, len(files), _CHUNK)]
    failures: list[tuple[int, str]] = []
    bar = tqdm(total=len(files), desc="decoding images", unit="img", disable=None if progress else True,
               leave=False)
    executor = ProcessPoolExecutor(workers) if workers > 1 and len(chunks) > 1 else None
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


def load_decoded(files: Sequence[Path], size: int, channels: int, *, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True, skip_corrupt: bool = False, workers: int | None = None,
                 progress: bool = True) -> DecodedImages:
    """Decoded pixels of ``files``, from the cache when its fingerprint matches, else decoded now.

    A corrupt image raises :class:`CorruptImageError` naming it, unless ``skip_corrupt`` is set, in
    which case it is marked invalid and one warning names the skipped files.
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
    group, key = _fingerprints(files, size, channels)
    array_path = directory / f"{group}-{key}.npy"
    manifest_path = directory / f"{group}-{key}.json"
    if array_path.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        failures = [(i, msg) for i, msg in manifest.get("corrupt", [])]
        pixels = np.load(array_path, mmap_mode="r")
        if pixels.shape == shape and manifest.get("files") == len(files):
            return DecodedImages(pixels, _valid_mask(files, failures, skip_corrupt), array_path)

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EpisodesError(f"cannot create the image cache folder {directory}: {exc.strerror} "
                            "(set FEWSHOT_CACHE_DIR or data.cache_dir to a writable folder)") from None
    tmp_array = directory / f".{group}-{key}.{os.getpid()}.tmp.npy"
    tmp_manifest = directory / f".{group}-{key}.{os.getpid()}.tmp.json"
    try:
        pixels = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=shape)
        failures = _decode_all(files, size, channels, pixels, workers, progress)
        valid = _valid_mask(files, failures, skip_corrupt)
        pixels.flush()
        del pixels
        tmp_manifest.write_text(json.dumps({"files": len(files), "size": size, "channels": channels,
                                            "corrupt": failures}))
        os.replace(tmp_array, array_path)
        os.replace(tmp_manifest, manifest_path)
    except OSError as exc:
        raise EpisodesError(f"cannot write the image cache in {directory}: {exc.strerror} "
                            "(free some space or set FEWSHOT_CACHE_DIR)") from None
    finally:
        _remove_quietly(tmp_array)
        _remove_quietly(tmp_manifest)
    for stale in directory.glob(f"{group}-*"):
        if stale.name not in (array_path.name, manifest_path.name):
            _remove_quietly(stale)
    return DecodedImages(np.load(array_path, mmap_mode="r"), valid, array_path)


def _valid_mask(files: Sequence[Path], failures: list[tuple[int, str]], skip_corrupt: bool) -> np.ndarray:
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
