"""``fewshot episodes``: JSON lines, determinism, and one-line user errors without traceback."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import sys

from conftest import make_image_folder
from fewshot.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True, timeout=120)


def test_episodes_json_lines(image_folder, capsys):
    assert main(["episodes", "--data", str(image_folder), "--ways", "3", "--shots", "2", "--queries", "1",
                 "--episodes", "4", "--seed", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    for record in records:
        assert len(record["classes"]) == 3
        assert [len(s) for s in record["support"]] == [2, 2, 2] and [len(q) for q in record["query"]] == [1, 1, 1]
        for name, support, query in zip(record["classes"], record["support"], record["query"]):
            assert all(f"/{name}/" in path for path in support + query)
            assert not set(support) & set(query)
    assert main(["episodes", "--data", str(image_folder), "--ways", "3", "--shots", "2", "--queries", "1",
                 "--episodes", "2", "--seed", "5", "--start", "2"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records[2:]


def test_rotated_classes_keep_suffix(tmp_path, capsys):
    make_image_folder(tmp_path / "omni", classes=3, nested=True, mode="L")
    listing = tmp_path / "test.txt"
    listing.write_text("alpha0/char00/rot000\nalpha0/char00/rot180\nalpha1/char01/rot090\nalpha0/char02/rot270\n")
    assert main(["episodes", "--data", str(tmp_path / "omni"), "--classes", str(listing), "--ways", "4",
                 "--shots", "1", "--queries", "1", "--episodes", "1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert sorted(record["classes"]) == ["alpha0/char00/rot000", "alpha0/char00/rot180", "alpha0/char02/rot270",
                                         "alpha1/char01/rot090"]


def test_user_errors_are_one_line(tmp_path, image_folder):
    cases = [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--data", str(image_folder), "--ways", "9"], "9-way episodes need 9 classes"),
        (["--data", str(image_folder), "--split", "test"], "split folder"),
        (["--csv", str(tmp_path / "x.csv"), "--images", str(image_folder)], "CSV split file"),
    ]
    for extra, message in cases:
        args = ["episodes", "--shots", "1", "--queries", "1", "--episodes", "1"]
        if "--ways" not in extra:
            args += ["--ways", "3"]
        result = run_cli(*args, *extra)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_small_class_warning_is_one_line(image_folder):
    for extra in list((image_folder / "class05").iterdir())[1:]:
        extra.unlink()
    result = run_cli("episodes", "--data", str(image_folder), "--ways", "3", "--shots", "1", "--queries", "2",
                     "--episodes", "1")
    assert result.returncode == 0
    assert result.stderr.strip() == ("warning: left out 1 classes of " + str(image_folder)
                                     + " with fewer than 3 images (shots+queries): class05 (1)")
    assert "class05" not in result.stdout


def test_glyph_dataset_is_distinct_and_disjoint(tmp_path, capsys):
    out = tmp_path / "glyphs"
    assert main(["glyphs", str(out), "--train-classes", "6", "--val-classes", "2", "--test-classes", "4",
                 "--per-class", "3", "--size", "20"]) == 0
    splits = {name: sorted(p.name for p in (out / name).iterdir()) for name in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [6, 2, 4]
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["val"]) & set(splits["test"])
    from episodes import SplitSpec, open_split
    test = open_split(SplitSpec((str(out),), split="test"), image_size=20, channels=1)
    assert test.pixels.shape == (12, 1, 20, 20)
    first, second = np.asarray(test.pixels[0], dtype=float), np.asarray(test.pixels[1], dtype=float)
    assert np.abs(first - second).mean() > 1.0, "two drawings of a glyph differ (random distortion)"
    assert main(["glyphs", str(tmp_path / "g2"), "--train-classes", "500"]) == 2
    assert "distinct characters" in capsys.readouterr().err


def test_regenerating_glyphs_with_other_settings_replaces_the_classes(tmp_path):
    from episodes.synthetic import make_glyph_dataset

    root = tmp_path / "g"
    make_glyph_dataset(root, classes=(5, 2, 3), per_class=2, size=12)
    make_glyph_dataset(root, classes=(4, 2, 2), per_class=2, size=12, seed=1)
    counts = [len(list((root / split).iterdir())) for split in ("train", "val", "test")]
    assert counts == [4, 2, 2]
    names = {split: {p.name for p in (root / split).iterdir()} for split in ("train", "val", "test")}
    assert not names["train"] & names["test"]
