"""Class discovery: a class is a directory that directly holds image files.

A class's name is its path relative to the root it was found under, with forward slashes, so an
ImageFolder tree (``root/cls/*.jpg``) gives names like ``cls`` and Omniglot
(``root/Alphabet/characterNN/*.png``) gives ``Alphabet/characterNN``. No spec file is needed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .errors import EpisodesError, EpisodesWarning, preview

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class ImageClass:
    """One class: its name, its image files (sorted) and a rotation applied to every image.

    ``rotation`` is in degrees counter-clockwise, a multiple of 90; rotated copies of a class are
    distinct classes (as in the Vinyals Omniglot split) and carry a ``/rotDDD`` name suffix.
    """

    name: str
    files: tuple[Path, ...] = field(repr=False)
    rotation: int = 0

    def __len__(self) -> int:
        return len(self.files)


def is_image_file(name: str) -> bool:
    """True when the file name has a known image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_classes(root: Path) -> Iterable[tuple[str, list[Path]]]:
    """Yield (relative name, sorted image files) for every directory holding images.

    Symbolic links to directories are followed, but every real directory is read once: a link to a
    folder already read (a loop such as ``ln -s .. loop``, or a second link to one folder) is skipped
    with a warning naming it. Folders reached without a link are read before those behind links, so
    the name a folder gets does not depend on where a link to it sorts.
    """
    seen: set[tuple[int, int]] = set()
    stack, links = [root], []
    while stack or links:
        directory = stack.pop() if stack else links.pop(0)
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:
                warnings.warn(f"skipped {directory}: it links to {os.path.realpath(directory)}, which is already "
                              "read (a symbolic-link loop or a second link to one folder)", EpisodesWarning,
                              stacklevel=3)
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            raise EpisodesError(f"cannot read folder {directory}: {exc.strerror}") from None
        images: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                (links if entry.is_symlink() else stack).append(Path(entry.path))
            elif is_image_file(entry.name):
                images.append(Path(entry.path))
        if images:
            relative = directory.relative_to(root).as_posix()
            yield ("." if relative == "." else relative), images


def check_root(root: str | os.PathLike) -> Path:
    """Return ``root`` as a Path, or raise a one-line error when it is not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise EpisodesError(f"data folder {path} does not exist: check the path (--data / data.root)")
    if not path.is_dir():
        raise EpisodesError(f"data path {path} is a file, not a folder of class subfolders")
    return path


def discover_classes(roots: Sequence[str | os.PathLike] | str | os.PathLike) -> list[ImageClass]:
    """Find every class under one or several roots, merged into one sorted list.

    Raises :class:`EpisodesError` for a missing root, a root with no image classes, or two roots
    that hold a class of the same name.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    found: dict[str, tuple[Path, ImageClass]] = {}
    for root in roots:
        root_path = check_root(root)
        count = 0
        for name, files in _walk_classes(root_path):
            if name == ".":
                name = root_path.name
            if name in found:
                raise EpisodesError(
                    f"class '{name}' exists under both {found[name][0]} and {root_path}: "
                    "merge only roots with distinct class names"
                )
            found[name] = (root_path, ImageClass(name, tuple(files)))
            count += 1
        if count == 0:
            subfolders = sorted(p.name for p in root_path.iterdir() if p.is_dir())
            hint = f" (it holds folders {preview(subfolders)})" if subfolders else ""
            raise EpisodesError(
                f"no image classes found under {root_path}{hint}: a class is a folder that directly "
                f"holds images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    return [cls for _, cls in sorted(found.values(), key=lambda item: item[1].name)]
