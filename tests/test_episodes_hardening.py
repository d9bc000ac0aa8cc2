"""Hostile data for the data layer: decompression bombs, symlink loops, dangling links, bad CSV rows,
and the decoded-image cache shared by several splits, several processes and a size cap."""

from __future__ import annotations

import json
import multiprocessing
import os
import struct
import subprocess
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import episodes.cache as cache_module
from episodes import (CorruptImageError, EpisodesError, EpisodesWarning, SplitSpec, decode_image, discover_classes,
                      load_decoded, open_split, resolve_split)

REPO = Path(__file__).resolve().parents[1]


def _files(root, classes=None):
    return [f for c in discover_classes(root) if classes is None or c.name in classes for f in c.files]


def _count_decodes(monkeypatch):
    calls = []
    original = cache_module._decode_all

    def counting(files, *args, **kwargs):
        calls.append(len(files))
        return original(files, *args, **kwargs)

    monkeypatch.setattr(cache_module, "_decode_all", counting)
    return calls


# --- decompression bombs ------------------------------------------------------------------------


def _write_huge_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit ``side x side`` PNG, written row by row (a few dozen KB on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_corrupt_image(image_folder):
    bomb = image_folder / "class01" / "zbomb.png"
    _write_huge_png(bomb)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(CorruptImageError, match=r"zbomb.png: refused, 400000000 pixels, more than PIL.s limit of \d+ "
                                                r"\(decompression-bomb protection\)"):
        decode_image(bomb, 8, 1)
    files = _files(image_folder)
    with pytest.raises(CorruptImageError, match="zbomb.png.*--skip-corrupt"):
        load_decoded(files, 8, 3, workers=1, progress=False)
    with pytest.warns(EpisodesWarning, match="skipped 1 corrupt images: zbomb.png"):
        decoded = load_decoded(files, 8, 3, workers=1, skip_corrupt=True, progress=False)
    assert decoded.valid.tolist() == [f != bomb for f in files]


# --- symlinks in the data folder ----------------------------------------------------------------


def test_symlink_loop_is_walked_once(image_folder):
    (image_folder / "class00" / "loop").symlink_to("..")
    with pytest.warns(EpisodesWarning, match=r"class00/loop") as record:
        classes = discover_classes(image_folder)
    assert [c.name for c in classes] == [f"class{i:02d}" for i in range(6)]
    assert len([w for w in record if issubclass(w.category, EpisodesWarning)]) == 1


def test_second_link_to_a_folder_is_skipped_and_the_real_folder_kept(image_folder):
    (image_folder / "aaa").symlink_to("class02")  # sorts (and would be walked) before class02
    (image_folder / "zzz").symlink_to(image_folder / "class03")
    with pytest.warns(EpisodesWarning) as record:
        classes = discover_classes(image_folder)
    assert [c.name for c in classes] == [f"class{i:02d}" for i in range(6)]
    messages = sorted(str(w.message) for w in record if issubclass(w.category, EpisodesWarning))
    assert len(messages) == 2 and "aaa" in messages[0] and "zzz" in messages[1]


def test_linked_class_folder_outside_the_root_is_used(tmp_path, image_folder):
    outside = tmp_path / "elsewhere"
    (image_folder / "class05").rename(outside)
    (image_folder / "class05").symlink_to(outside)
    assert len(discover_classes(image_folder)) == 6


def test_dangling_symlink_is_a_corrupt_image(image_folder):
    link = image_folder / "class01" / "zz.png"
    link.symlink_to(image_folder / "nowhere.png")
    spec = SplitSpec((str(image_folder),))
    with pytest.raises(CorruptImageError, match=r"class01/zz.png: it is a broken symbolic link.*--skip-corrupt"):
        open_split(spec, image_size=8, channels=3, workers=1, progress=False)
    with pytest.warns(EpisodesWarning, match="skipped 1 corrupt images: zz.png"):
        split = open_split(spec, image_size=8, channels=3, workers=1, skip_corrupt=True, progress=False)
    assert split.class_sizes == [10] * 6
    with pytest.raises(CorruptImageError, match="broken symbolic link"):
        load_decoded(_files(image_folder), 8, 3, use_cache=False, workers=1, progress=False)


def test_vanished_file_is_still_reported_as_vanished(image_folder):
    files = _files(image_folder) + [image_folder / "class01" / "gone.png"]
    with pytest.raises(EpisodesError, match="gone.png disappeared while reading the data: re-run"):
        load_decoded(files, 8, 3, workers=1, progress=False)


# --- CSV splits -----------------------------------------------------------------------------------


def _csv_split(tmp_path, rows):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    path = tmp_path / "split.csv"
    path.write_text("filename,label\n" + "".join(f"{row}\n" for row in rows))
    return SplitSpec((), csv=str(path), images=str(images))


def test_csv_empty_label(tmp_path):
    spec = _csv_split(tmp_path, ["a.jpg,n01", "b.jpg, "])
    with pytest.raises(EpisodesError, match=r"split.csv line 3: 'b.jpg' has an empty label"):
        resolve_split(spec)


def test_csv_file_under_two_labels(tmp_path):
    spec = _csv_split(tmp_path, ["a.jpg,n01", "b.jpg,n01", "c.jpg,n02", "b.jpg,n02"])
    with pytest.raises(EpisodesError, match=r"split.csv lines 3 and 5: 'b.jpg' is listed under both labels "
                                            r"'n01' and 'n02'"):
        resolve_split(spec)


def test_csv_file_listed_twice(tmp_path):
    spec = _csv_split(tmp_path, ["a.jpg,n01", "b.jpg,n01", "a.jpg,n01"])
    with pytest.raises(EpisodesError, match=r"split.csv lines 2 and 4: 'a.jpg' is listed twice under label 'n01'"):
        resolve_split(spec)


def test_csv_same_name_in_two_label_folders_is_fine(tmp_path):
    images = tmp_path / "images"
    for label in ("n01", "n02"):
        (images / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(images / label / "x.jpg")
    (tmp_path / "s.csv").write_text("filename,label\nx.jpg,n01\nx.jpg,n02\n")
    classes = resolve_split(SplitSpec((), csv=str(tmp_path / "s.csv"), images=str(images)))
    assert [c.files[0].parent.name for c in classes] == ["n01", "n02"]


# --- the decoded-image cache --------------------------------------------------------------------


def test_two_splits_of_one_folder_keep_both_caches(image_folder, isolated_cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    train = _files(image_folder, {"class00", "class01", "class02"})
    test = _files(image_folder, {"class03", "class04", "class05"})
    load_decoded(train, 8, 3, workers=1, progress=False)
    load_decoded(test, 8, 3, workers=1, progress=False)
    assert calls == [30, 30]
    again = load_decoded(train, 8, 3, workers=1, progress=False)
    assert calls == [30, 30], "the second split must not delete the first one's cache"
    assert again.pixels.shape == (30, 3, 8, 8)
    assert len(list(isolated_cache.glob("*.npy"))) == 2


def test_cache_size_cap_evicts_least_recently_used(image_folder, isolated_cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    splits = [_files(image_folder, {f"class{2 * i:02d}", f"class{2 * i + 1:02d}"}) for i in range(3)]
    first = load_decoded(splits[0], 8, 3, workers=1, progress=False)
    load_decoded(splits[1], 8, 3, workers=1, progress=False)
    one_array = first.path.stat().st_size
    for number, manifest in enumerate(sorted(isolated_cache.glob("*.json"), key=os.path.getmtime)):
        os.utime(manifest, (1000 + number, 1000 + number))  # split 0 used long ago, split 1 later
    load_decoded(splits[0], 8, 3, workers=1, progress=False)  # a hit marks split 0 as just used
    monkeypatch.setenv("FEWSHOT_CACHE_MAX_GB", str(2.5 * one_array / 1e9))
    load_decoded(splits[2], 8, 3, workers=1, progress=False)
    assert calls == [20, 20, 20]
    assert len(list(isolated_cache.glob("*.npy"))) == 2
    load_decoded(splits[0], 8, 3, workers=1, progress=False)
    assert calls == [20, 20, 20], "the recently used split is kept"
    load_decoded(splits[1], 8, 3, workers=1, progress=False)
    assert calls == [20, 20, 20, 20], "the least recently used split was evicted"
    monkeypatch.setenv("FEWSHOT_CACHE_MAX_GB", "0")
    load_decoded(splits[2][:5], 8, 3, workers=1, progress=False)
    assert len(list(isolated_cache.glob("*.npy"))) == 1, "only the array just built is kept"


def test_bad_cache_size_cap(image_folder, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE_MAX_GB", "lots")
    with pytest.raises(EpisodesError, match="FEWSHOT_CACHE_MAX_GB must be a number of gigabytes"):
        load_decoded(_files(image_folder), 8, 3, workers=1, progress=False)


@pytest.mark.parametrize("damage", ["manifest-garbage", "manifest-fields", "manifest-missing", "array-garbage",
                                    "array-shape", "array-truncated"])
def test_damaged_cache_is_a_miss(image_folder, isolated_cache, monkeypatch, damage):
    calls = _count_decodes(monkeypatch)
    files = _files(image_folder)
    cold = np.array(load_decoded(files, 8, 3, workers=1, progress=False).pixels)
    manifest, array = next(isolated_cache.glob("*.json")), next(isolated_cache.glob("*.npy"))
    if damage == "manifest-garbage":
        manifest.write_text("{not json")
    elif damage == "manifest-fields":
        manifest.write_text(json.dumps({"files": 60, "size": 8, "channels": 3, "corrupt": [["x", 1]]}))
    elif damage == "manifest-missing":
        manifest.unlink()
    elif damage == "array-garbage":
        array.write_bytes(b"garbage" * 100)
    elif damage == "array-shape":
        np.save(array, np.zeros((60, 3, 4, 4), dtype=np.uint8))
    else:
        array.write_bytes(array.read_bytes()[:1000])
    warm = load_decoded(files, 8, 3, workers=1, progress=False)
    assert calls == [60, 60]
    assert np.array_equal(np.asarray(warm.pixels), cold)
    assert load_decoded(files, 8, 3, workers=1, progress=False).valid.all() and calls == [60, 60]


def test_build_without_fcntl(image_folder, isolated_cache, monkeypatch):
    monkeypatch.setattr(cache_module, "fcntl", None)
    files = _files(image_folder)
    assert load_decoded(files, 8, 3, workers=1, progress=False).pixels.shape == (60, 3, 8, 8)
    assert sorted(p.suffix for p in isolated_cache.iterdir()) == [".json", ".npy"]


_CHILD = r"""
import sys, time
from pathlib import Path
import numpy as np
import episodes.cache as cache

marker, ready, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
files = [Path(p) for p in sys.argv[4:]]
original = cache._decode_all

def counting(*args, **kwargs):
    with open(marker, "a") as handle:
        handle.write(me + "\n")
    time.sleep(1.0)  # hold the build long enough for the other process to arrive
    return original(*args, **kwargs)

cache._decode_all = counting
(ready / me).touch()
deadline = time.time() + 120
while len(list(ready.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.005)
decoded = cache.load_decoded(files, 8, 3, workers=1, progress=False)
print(int(np.asarray(decoded.pixels, dtype=np.int64).sum()), decoded.pixels.shape)
"""


def test_two_processes_decode_a_split_once(image_folder, isolated_cache, tmp_path):
    marker, ready = tmp_path / "decodes.txt", tmp_path / "ready"
    ready.mkdir()
    files = [str(f) for f in _files(image_folder)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(marker), str(ready), name, *files], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("a", "b")]
    results = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err
    assert results[0][0] == results[1][0] and "(60, 3, 8, 8)" in results[0][0]
    assert len(marker.read_text().split()) == 1, "the split is decoded by one process only"
    assert sorted(p.suffix for p in isolated_cache.iterdir()) == [".json", ".npy"], "no lock or temporary left"


def test_pool_context_avoids_forking_cuda(monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert cache_module._pool_context().get_start_method() == "spawn"
    fake_torch.cuda.is_initialized = lambda: False
    assert cache_module._pool_context() is None
    monkeypatch.delitem(sys.modules, "torch")
    assert cache_module._pool_context() is None


def test_decode_pool_uses_the_chosen_context(image_folder, monkeypatch):
    used = []
    spawn = multiprocessing.get_context("spawn")

    class RecordingPool:
        def __init__(self, workers, mp_context=None):
            used.append(mp_context)

        def map(self, function, items):
            return map(function, items)

        def shutdown(self, **kwargs):
            pass

    monkeypatch.setattr(cache_module, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(cache_module, "_pool_context", lambda: spawn)
    files = _files(image_folder) * 5
    decoded = load_decoded(files, 8, 3, use_cache=False, workers=2, progress=False)
    assert used == [spawn] and decoded.pixels.shape == (300, 3, 8, 8)
