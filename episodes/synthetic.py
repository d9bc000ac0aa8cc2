"""A generated few-shot dataset of glyphs, for demos and smoke runs: no download needed.

Each class is one character (Latin, Greek, Cyrillic, Armenian, Georgian, Hebrew, symbols...) drawn
from the DejaVu and STIX fonts that matplotlib installs, under random font, rotation, scale, shift,
stroke width and noise: an Omniglot-like task. Characters that render the same as an earlier one
(Latin ``A`` and Greek ``Α``) are dropped, so every class is visually distinct. Classes are split into
disjoint ``train`` / ``val`` / ``test`` subfolders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .errors import EpisodesError

_RANGES = [(0x41, 0x5A), (0x61, 0x7A), (0x30, 0x39), (0x391, 0x3A9), (0x3B1, 0x3C9), (0x410, 0x44F),
           (0x531, 0x556), (0x10D0, 0x10F0), (0x5D0, 0x5EA), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x25A0, 0x25FF)]
_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSans-Oblique.ttf",
          "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf"]


def font_paths() -> list[Path]:
    """The TrueType fonts shipped with matplotlib that the glyphs are drawn in."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / name for name in _FONTS if (folder / name).exists()]


def _render(char: str, font: ImageFont.FreeTypeFont, canvas: int, stroke: int = 0) -> Image.Image:
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text((canvas / 2, canvas / 2), char, fill=255, font=font, anchor="mm",
                               stroke_width=stroke, stroke_fill=255)
    return image


def distinct_characters(limit: int | None = None, canvas: int = 48) -> list[str]:
    """Characters that every demo font draws, each with a bitmap unlike all earlier ones."""
    fonts = [ImageFont.truetype(str(path), 36) for path in font_paths()]
    reference = fonts[0]
    seen: list[np.ndarray] = []
    chosen: list[str] = []
    for start, end in _RANGES:
        for code in range(start, end + 1):
            char = chr(code)
            if not all(font.getmask(char).getbbox() for font in fonts):
                continue
            bitmap = np.asarray(_render(char, reference, canvas).resize((16, 16)), dtype=np.float32) / 255.0
            if bitmap.sum() < 3 or any(np.abs(bitmap - other).mean() < 0.06 for other in seen):
                continue
            seen.append(bitmap)
            chosen.append(char)
            if limit and len(chosen) >= limit:
                return chosen
    return chosen


def draw_glyph(char: str, rng: np.random.Generator, size: int, fonts: list[ImageFont.FreeTypeFont]) -> Image.Image:
    """One random drawing of ``char`` as a ``size`` x ``size`` grayscale image (white on black)."""
    canvas = 80
    font = fonts[int(rng.integers(len(fonts)))]
    image = _render(char, font, canvas, stroke=int(rng.integers(0, 2)))
    image = image.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR,
                         translate=tuple(rng.uniform(-5, 5, size=2)))
    scale = float(rng.uniform(0.8, 1.15))
    crop = 64 / scale
    offset = (canvas - crop) / 2
    box = (offset, offset, offset + crop, offset + crop)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 18, (size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def make_glyph_dataset(root: str | os.PathLike, classes: tuple[int, int, int] = (110, 25, 45), per_class: int = 20,
                       size: int = 28, seed: int = 0) -> Path:
    """Write ``root/{train,val,test}/<char-code>/<n>.png`` and return ``root``.

    ``classes`` is the number of (train, val, test) classes, disjoint; raises EpisodesError when the fonts
    hold fewer distinct characters than asked for. A complete dataset of the same settings is reused;
    one of other settings is replaced.
    """
    root = Path(root)
    marker = root / ".complete"
    wanted = f"{classes} {per_class} {size} {seed}"
    if marker.exists() and marker.read_text() == wanted:
        return root
    for split in ("train", "val", "test"):  # another generation's classes must not mix with this one's
        shutil.rmtree(root / split, ignore_errors=True)
    marker.unlink(missing_ok=True)
    total = sum(classes)
    chars = distinct_characters()
    if len(chars) < total:
        raise EpisodesError(f"the fonts give {len(chars)} distinct characters, fewer than the {total} classes "
                            "asked for")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chars))[:total]
    fonts = [ImageFont.truetype(str(path), 40) for path in font_paths()]
    bounds = np.cumsum((0, *classes))
    for split, start, end in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
        for index in order[start:end]:
            char = chars[index]
            folder = root / split / f"U{ord(char):04X}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                draw_glyph(char, rng, size, fonts).save(folder / f"{n:02d}.png")
    marker.write_text(wanted)
    return root
