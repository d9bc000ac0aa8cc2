"""Splits: which classes form train / val / test.

Three forms are read:

* a **subfolder** of each root (``root/train``, ``root/val``, ``root/test``);
* a **class-list file**: one class path per line, relative to the roots (``Alphabet/character01``);
  a trailing ``/rotDDD`` makes a class whose images are rotated by DDD degrees, as in the Vinyals
  Omniglot lists;
* a **miniImageNet CSV** (Ravi & Larochelle): ``filename,label`` rows plus a folder of images.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .discovery import ImageClass, check_root, discover_classes
from .errors import EpisodesError, preview

_ROTATION_SUFFIX = re.compile(r"^(?P<base>.+)/rot(?P<degrees>\d{3})$")


@dataclass(frozen=True)
class SplitSpec:
    """Where a split's classes come from; at most one of ``split``, ``classes``, ``csv`` is set.

    With none set, every class found under ``roots`` is used.
    """

    roots: tuple[str, ...]
    split: str | None = None
    classes: str | None = None
    csv: str | None = None
    images: str | None = None

    def describe(self) -> str:
        """A short human description, used in error messages."""
        where = ", ".join(self.roots) if self.roots else str(self.images)
        if self.split:
            return f"split '{self.split}' of {where}"
        if self.classes:
            return f"class list {self.classes}"
        if self.csv:
            return f"CSV {self.csv}"
        return where


def split_subfolder(roots: Sequence[str | os.PathLike], split: str) -> list[ImageClass]:
    """Classes of ``root/split`` for every root."""
    folders = []
    for root in roots:
        root_path = check_root(root)
        folder = root_path / split
        if not folder.is_dir():
            available = sorted(p.name for p in root_path.iterdir() if p.is_dir())
            raise EpisodesError(
                f"split folder {folder} does not exist; subfolders of {root_path} are: "
                f"{preview(available, 8) or 'none'}"
            )
        folders.append(folder)
    return discover_classes(folders)


def parse_rotation(line: str) -> tuple[str, int]:
    """Split ``Alphabet/character01/rot090`` into (``Alphabet/character01``, 90)."""
    match = _ROTATION_SUFFIX.match(line)
    if not match:
        return line, 0
    degrees = int(match["degrees"])
    if degrees % 90:
        raise EpisodesError(f"rotation in '{line}' must be a multiple of 90 degrees")
    return match["base"], degrees % 360


def classes_from_list(roots: Sequence[str | os.PathLike], list_file: str | os.PathLike) -> list[ImageClass]:
    """Classes named in a class-list file, in the file's order, with their rotations."""
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise EpisodesError(f"class-list file {path} does not exist")
    available = {cls.name: cls for cls in discover_classes(roots)}
    chosen: list[ImageClass] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip().strip("/")
        if not line or line.startswith("#"):
            continue
        base, rotation = parse_rotation(line)
        if base not in available:
            raise EpisodesError(
                f"{path} line {number}: class '{base}' not found under {', '.join(map(str, roots))} "
                f"(class names look like '{next(iter(available))}')"
            )
        if line in seen:
            raise EpisodesError(f"{path} line {number}: class '{line}' is listed twice")
        seen.add(line)
        source = available[base]
        name = line if rotation or line != base else base
        chosen.append(ImageClass(name, source.files, rotation))
    if not chosen:
        raise EpisodesError(f"class-list file {path} names no classes")
    return chosen


def classes_from_csv(csv_file: str | os.PathLike, images: str | os.PathLike) -> list[ImageClass]:
    """Classes of a miniImageNet CSV (``filename,label`` rows) whose images lie in ``images``.

    A row's file is ``images/filename``, else ``images/label/filename``. Raises :class:`EpisodesError`
    naming the line for an empty filename or label and for a file listed on two rows (under one label
    or two), and naming the files missing from ``images``.
    """
    path = Path(csv_file).expanduser()
    if not path.is_file():
        raise EpisodesError(f"CSV split file {path} does not exist")
    image_dir = check_root(images)
    by_label: dict[str, list[Path]] = {}
    first_row: dict[Path, tuple[int, str]] = {}  # file -> (line number, label) of its row
    missing: list[str] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["filename", "label"]:
            raise EpisodesError(f"{path} must start with the header 'filename,label' (miniImageNet CSV format)")
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise EpisodesError(f"{path} line {number}: expected 'filename,label', got '{','.join(row)}'")
            filename, label = row[0].strip(), row[1].strip()
            if not filename:
                raise EpisodesError(f"{path} line {number}: empty filename: every row needs 'filename,label'")
            if not label:
                raise EpisodesError(f"{path} line {number}: '{filename}' has an empty label: every row needs "
                                    "'filename,label'")
            file_path = image_dir / filename
            if not file_path.is_file():
                nested = image_dir / label / filename
                if nested.is_file():
                    file_path = nested
                else:
                    missing.append(filename)
                    continue
            if file_path in first_row:
                first, first_label = first_row[file_path]
                where = f"{path} lines {first} and {number}: '{filename}' is listed"
                if first_label == label:
                    raise EpisodesError(f"{where} twice under label '{label}': delete one of the rows")
                raise EpisodesError(f"{where} under both labels '{first_label}' and '{label}': an image belongs "
                                    "to one class, delete the wrong row")
            first_row[file_path] = (number, label)
            by_label.setdefault(label, []).append(file_path)
    if missing:
        raise EpisodesError(
            f"{len(missing)} images named in {path} are missing from {image_dir}: {preview(missing)}"
        )
    if not by_label:
        raise EpisodesError(f"{path} has no rows")
    return [ImageClass(label, tuple(files)) for label, files in by_label.items()]


def resolve_split(spec: SplitSpec) -> list[ImageClass]:
    """The classes a :class:`SplitSpec` names."""
    chosen = [name for name in ("split", "classes", "csv") if getattr(spec, name)]
    if len(chosen) > 1:
        raise EpisodesError(f"give only one of split / classes / csv, not {' and '.join(chosen)}")
    if spec.csv:
        if not spec.images:
            raise EpisodesError("a CSV split needs the folder of its images (--images / data.images)")
        return classes_from_csv(spec.csv, spec.images)
    if not spec.roots:
        raise EpisodesError("no data folder given (--data / data.root)")
    if spec.split:
        return split_subfolder(spec.roots, spec.split)
    if spec.classes:
        return classes_from_list(spec.roots, spec.classes)
    return discover_classes(spec.roots)
