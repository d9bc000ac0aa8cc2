"""Class discovery, merged roots and the three split forms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from episodes import EpisodesError, SplitSpec, discover_classes, open_split, resolve_split


def test_imagefolder_layout_and_non_images_ignored(image_folder):
    (image_folder / "class00" / "notes.txt").write_text("not an image")
    (image_folder / "class00" / ".hidden.png").write_bytes(b"")
    classes = discover_classes(image_folder)
    assert [c.name for c in classes] == [f"class{i:02d}" for i in range(6)]
    assert all(len(c) == 10 for c in classes)
    assert all(p.suffix == ".png" for c in classes for p in c.files)


def test_nested_layout_names_are_relative_paths(tmp_path):
    make_image_folder(tmp_path / "omni", classes=4, nested=True)
    names = [c.name for c in discover_classes(tmp_path / "omni")]
    assert names == ["alpha0/char00", "alpha0/char02", "alpha1/char01", "alpha1/char03"]


def test_roots_merge_and_clash(tmp_path):
    make_image_folder(tmp_path / "a", classes=2)
    (tmp_path / "b" / "other").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "other" / "x.png")
    assert len(discover_classes([tmp_path / "a", tmp_path / "b"])) == 3
    make_image_folder(tmp_path / "c", classes=1)
    with pytest.raises(EpisodesError, match="class00.*both"):
        discover_classes([tmp_path / "a", tmp_path / "c"])


def test_missing_root_and_no_classes(tmp_path):
    with pytest.raises(EpisodesError, match="does not exist"):
        discover_classes(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(EpisodesError, match="no image classes found"):
        discover_classes(tmp_path / "empty")


def test_subfolder_split(tmp_path):
    make_image_folder(tmp_path / "ds" / "train", classes=3)
    make_image_folder(tmp_path / "ds" / "test", classes=2, seed=5)
    assert len(resolve_split(SplitSpec((str(tmp_path / "ds"),), split="test"))) == 2
    with pytest.raises(EpisodesError, match="subfolders of .* test, train"):
        resolve_split(SplitSpec((str(tmp_path / "ds"),), split="val"))


def test_class_list_with_rotations_rotates_pixels(tmp_path):
    make_image_folder(tmp_path / "omni", classes=2, nested=True, mode="L")
    listing = tmp_path / "list.txt"
    listing.write_text("alpha0/char00/rot000\nalpha0/char00/rot090\nalpha1/char01\n")
    spec = SplitSpec((str(tmp_path / "omni"),), classes=str(listing))
    split = open_split(spec, image_size=16, channels=1)
    assert split.class_names == ["alpha0/char00/rot000", "alpha0/char00/rot090", "alpha1/char01"]
    assert split.rotations == [0, 90, 0]
    upright, turned = split.images(0, [3]), split.images(1, [3])
    assert not np.array_equal(upright.numpy(), turned.numpy())
    assert np.array_equal(np.rot90(upright.numpy(), k=1, axes=(2, 3)), turned.numpy())
    # both rotations share one decoded row: the file is decoded once
    assert split.pixels.shape[0] == 20


def test_class_list_unknown_class(tmp_path):
    make_image_folder(tmp_path / "omni", classes=2, nested=True)
    listing = tmp_path / "list.txt"
    listing.write_text("alpha0/char00\nalpha9/char77/rot180\n")
    with pytest.raises(EpisodesError, match="line 2: class 'alpha9/char77' not found"):
        resolve_split(SplitSpec((str(tmp_path / "omni"),), classes=str(listing)))


def _write_csv(tmp_path, names):
    images = tmp_path / "images"
    images.mkdir()
    rows = ["filename,label"]
    for label in ("n01", "n02", "n03"):
        for i in range(6):
            name = f"{label}{i:08d}.jpg"
            if name in names:
                Image.new("RGB", (20, 20), color=(i * 20, 10, 10)).save(images / name)
            rows.append(f"{name},{label}")
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "test.csv", images


def test_miniimagenet_csv(tmp_path):
    all_names = {f"{label}{i:08d}.jpg" for label in ("n01", "n02", "n03") for i in range(6)}
    csv_file, images = _write_csv(tmp_path, all_names)
    classes = resolve_split(SplitSpec((), csv=str(csv_file), images=str(images)))
    assert [c.name for c in classes] == ["n01", "n02", "n03"]
    assert all(len(c) == 6 for c in classes)


def test_csv_missing_files_listed(tmp_path):
    all_names = sorted(f"{label}{i:08d}.jpg" for label in ("n01", "n02", "n03") for i in range(6))
    csv_file, images = _write_csv(tmp_path, set(all_names[5:]))
    with pytest.raises(EpisodesError, match=r"5 images named in .* are missing .*n0100000000.jpg.*and 2 more"):
        resolve_split(SplitSpec((), csv=str(csv_file), images=str(images)))


def test_only_one_split_form(tmp_path, image_folder):
    with pytest.raises(EpisodesError, match="only one of"):
        resolve_split(SplitSpec((str(image_folder),), split="train", classes="x.txt"))
