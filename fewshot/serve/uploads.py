"""Checks on what clients send: size limits, image content (not the extension), and names.

An upload is read into memory up to ``max_file_bytes`` (the request body itself is capped by
:class:`fewshot.serve.app.BodyLimit`), identified by its content with PIL, its pixel count checked against
``max_pixels`` from the header *before* any pixel is decoded (a decompression bomb costs a few bytes of
reading), then decoded fully once to prove it is not truncated.
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import FewshotError

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp",
                   "WEBP": "image/webp", "TIFF": "image/tiff"}
THUMBNAIL_SIDE = 160
MAX_NAME_LENGTH = 100


class TooLarge(FewshotError):
    """A file, an image or a request over a limit (HTTP 413)."""


class NotAnImage(FewshotError):
    """Content that is not an image of an accepted format (HTTP 415)."""


class BadImage(FewshotError):
    """An image that cannot be decoded: truncated or corrupt (HTTP 400)."""


class BadName(FewshotError):
    """A project or class name that cannot be used (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    """What one server accepts; ``fewshot serve`` flags set them."""

    max_file_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files_per_request: int = 100
    max_images_per_project: int = 5000

    @property
    def max_request_bytes(self) -> int:
        """Every file at its limit plus room for the multipart framing."""
        return self.max_file_bytes * self.max_files_per_request + 1024 * 1024

    def to_json(self) -> dict:
        return {"max_file_bytes": self.max_file_bytes, "max_pixels": self.max_pixels,
                "max_files_per_request": self.max_files_per_request,
                "max_images_per_project": self.max_images_per_project}


@dataclass
class CheckedImage:
    """An upload that is a decodable image within the limits."""

    data: bytes
    name: str
    format: str
    width: int
    height: int
    image: Image.Image  # decoded, first frame
    sha256: str

    def thumbnail_png(self) -> bytes:
        thumb = self.image.convert("RGBA" if "A" in self.image.getbands() else "RGB")
        thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        thumb.save(out, format="PNG")
        return out.getvalue()


BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


def is_unsafe_character(ch: str) -> bool:
    """Control characters, surrogates and bidirectional overrides (which can make a name read as another);
    other format characters stay (the zero-width joiner builds emoji)."""
    return unicodedata.category(ch) in ("Cc", "Cs") or ord(ch) in BIDI_CONTROLS


def display_name(name: str | None, fallback: str = "image") -> str:
    """A client's file name, safe to store and show: the last path component, control characters removed,
    at most 200 characters. Only ever displayed, never used as a path."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if not is_unsafe_character(ch))
    return name.strip()[:200] or fallback


def check_name(name: object, what: str) -> str:
    """A project or class name: a string of 1 to 100 characters after trimming, NFC-normalized, with no
    control character or bidirectional override. Any other Unicode is kept (the page shows names as text,
    never as HTML)."""
    if not isinstance(name, str):
        raise BadName(f"the {what} name must be a string")
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise BadName(f"the {what} name is empty: give a name")
    if len(name) > MAX_NAME_LENGTH:
        raise BadName(f"the {what} name has {len(name)} characters; at most {MAX_NAME_LENGTH} are allowed")
    bad = [ch for ch in name if is_unsafe_character(ch)]
    if bad:
        raise BadName(f"the {what} name holds a control character (U+{ord(bad[0]):04X}): remove it")
    return name


def check_image(data: bytes, name: str, limits: Limits) -> CheckedImage:
    """Verify one upload by its content; raises :class:`TooLarge`, :class:`NotAnImage` or :class:`BadImage`
    with a one-line message naming the file."""
    if len(data) > limits.max_file_bytes:
        raise TooLarge(f"'{name}' is {len(data) / 1e6:.1f} MB; the limit is {limits.max_file_bytes / 1e6:.1f} MB "
                       "per file: upload a smaller image")
    if not data:
        raise BadImage(f"'{name}' is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise NotAnImage(f"'{name}' is not an image (its content is not PNG, JPEG, GIF, BMP, WebP or TIFF)") \
                from None
        raise TooLarge(f"'{name}' has too many pixels to decode safely: the limit is {limits.max_pixels:,}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"'{name}' cannot be read as an image ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    if image.format not in ALLOWED_FORMATS:
        raise NotAnImage(f"'{name}' is a {image.format} file; accepted: {', '.join(ALLOWED_FORMATS)}")
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage(f"'{name}' has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise TooLarge(f"'{name}' is {width}x{height} = {width * height:,} pixels; the limit is "
                       f"{limits.max_pixels:,} (decompression-bomb protection): resize it first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)
            image.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImage(f"'{name}' is a damaged {image.format} image ({reason}): upload it again or export it anew") \
            from None
    return CheckedImage(data, name, image.format, width, height, image, hashlib.sha256(data).hexdigest())
