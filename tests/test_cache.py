"""The decoded-image cache: decoded once, reused warm, rebuilt on any change, never half-written."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import episodes.cache as cache_module
from episodes import SplitSpec, load_decoded, open_split, discover_classes


def _files(root):
    return [f for c in discover_classes(root) for f in c.files]


def _count_decodes(monkeypatch):
    calls = []
    original = cache_module.decode_image

    def counting(path, size, channels):
        calls.append(path)
        return original(path, size, channels)

    monkeypatch.setattr(cache_module, "decode_image", counting)
    return calls


def test_warm_load_decodes_nothing(image_folder, isolated_cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    files = _files(image_folder)
    cold = load_decoded(files, 8, 3, workers=1)
    assert len(calls) == 60
    warm = load_decoded(files, 8, 3, workers=1)
    assert len(calls) == 60, "warm load must not decode"
    assert isinstance(warm.pixels, np.memmap)
    assert np.array_equal(np.asarray(cold.pixels), np.asarray(warm.pixels))
    assert len(list(isolated_cache.glob("*.npy"))) == 1


def test_rebuilt_when_a_file_changes(image_folder, isolated_cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    files = _files(image_folder)
    load_decoded(files, 8, 3, workers=1)
    target = image_folder / "class03" / "img001.png"
    Image.new("RGB", (16, 16), color=(255, 0, 0)).save(target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = load_decoded(files, 8, 3, workers=1)
    assert len(calls) == 120
    assert tuple(np.asarray(rebuilt.pixels)[files.index(target), :, 0, 0]) == (255, 0, 0)
    assert len(list(isolated_cache.glob("*.npy"))) == 1, "the stale array is removed"
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))  # mtime alone
    load_decoded(files, 8, 3, workers=1)
    assert len(calls) == 180
    (image_folder / "class03" / "img001.png").unlink()  # file list changes
    load_decoded(_files(image_folder), 8, 3, workers=1)
    assert len(calls) == 180 + 59


def test_size_and_channels_are_part_of_the_key(image_folder, monkeypatch):
    calls = _count_decodes(monkeypatch)
    files = _files(image_folder)
    assert load_decoded(files, 8, 3, workers=1).pixels.shape == (60, 3, 8, 8)
    assert load_decoded(files, 10, 3, workers=1).pixels.shape == (60, 3, 10, 10)
    assert load_decoded(files, 8, 1, workers=1).pixels.shape == (60, 1, 8, 8)
    assert len(calls) == 180


def test_interrupted_build_leaves_nothing(image_folder, isolated_cache, monkeypatch):
    def failing(path, size, channels):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "decode_image", failing)
    with pytest.raises(KeyboardInterrupt):
        load_decoded(_files(image_folder), 8, 3, workers=1)
    assert list(isolated_cache.iterdir()) == []


def test_parallel_decode_matches_serial(image_folder, tmp_path):
    files = _files(image_folder)
    serial = load_decoded(files, 8, 3, use_cache=False, workers=1)
    parallel = load_decoded(files * 10, 8, 3, cache_dir=tmp_path / "c2", workers=2)
    assert np.array_equal(np.asarray(parallel.pixels)[:60], serial.pixels)
    assert np.array_equal(np.asarray(parallel.pixels)[540:], serial.pixels)


def test_split_reuses_cache_across_runs(image_folder, monkeypatch):
    calls = _count_decodes(monkeypatch)
    spec = SplitSpec((str(image_folder),))
    first = open_split(spec, image_size=8, channels=3, workers=1)
    second = open_split(spec, image_size=8, channels=3, workers=1)
    assert len(calls) == 60
    assert np.array_equal(np.asarray(first.pixels), np.asarray(second.pixels))
