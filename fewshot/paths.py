"""The paths a user gives, checked without decoding anything (so the CLI can refuse a wrong one before it loads a
model): a support folder of class subfolders, and query files or folders."""

from __future__ import annotations

from pathlib import Path

from episodes.discovery import is_image_file

from .errors import FewshotError, SupportSetError


def folder_classes(root: Path, role: str = "support", least: int = 2) -> dict[str, list[Path]]:
    """``{class: [image files]}`` of a ``role`` folder (one subfolder per class), listed without decoding
    anything; a missing folder, an empty class or fewer than ``least`` classes is a one-line error."""
    from episodes.discovery import is_image_file

    if not root.is_dir():
        raise SupportSetError(f"{role} folder {root} does not exist (it should hold one subfolder per class)")
    grouped = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and is_image_file(p.name))
        if not files:
            raise SupportSetError(f"{role} class '{class_dir.name}' ({class_dir}) has no images: add a few or "
                                  "remove it")
        grouped[class_dir.name] = files
    if len(grouped) < least:
        raise SupportSetError(f"{role} folder {root} must hold at least {'two' if least == 2 else least} class "
                              f"subfolder{'s' if least > 1 else ''}, found {len(grouped)}")
    return grouped


def expand_queries(paths: list[str]) -> list[Path]:
    """Query paths, with folders replaced by the images they hold; a missing path is an error."""
    out: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p.name))
            if not found:
                inner = [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
                hint = (f"; its subfolders ({', '.join(sorted(inner)[:3])}{', ...' if len(inner) > 3 else ''}) "
                        "are not searched: give them, or their images, as queries") if inner else ""
                raise FewshotError(f"query folder {path} holds no images{hint}")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FewshotError(f"query {path} does not exist")
    return out
