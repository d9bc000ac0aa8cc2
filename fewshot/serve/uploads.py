"""Checks on what clients send: size limits, image content (not the extension), and names.

An upload is read into memory up to ``max_file_bytes`` (the request body itself is capped by
:class:`fewshot.serve.app.Guard` at :attr:`Limits.request_cap`), identified by its content with PIL, its pixel
count checked against ``max_pixels`` from the header *before* any pixel is decoded (a decompression bomb
costs a few bytes of reading), then decoded fully once to prove it is not truncated. Only what the caller
needs of the decoded pixels is kept (a thumbnail, a model-size copy), never every full-size image of a
request at once.
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from ..errors import FewshotError

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp",
                   "WEBP": "image/webp", "TIFF": "image/tiff"}
THUMBNAIL_SIDE = 160
INVISIBLE_CATEGORIES = ("Cf", "Mn", "Me", "Zs", "Zl", "Zp")  # format characters, combining marks, separators
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
    max_request_bytes: int = 200 * 1024 * 1024
    max_inflight_bytes: int = 400 * 1024 * 1024  # request bodies being received at once, all clients together
    max_decodes: int = 2  # images decoded at once (each up to max_pixels): bounds decoded-pixel memory

    @property
    def request_cap(self) -> int:
        """The largest request body accepted: ``max_request_bytes``, or less when every file allowed in a
        request at its limit (plus room for the multipart framing) comes to less."""
        return min(self.max_request_bytes, self.max_file_bytes * self.max_files_per_request + 1024 * 1024)

    def to_json(self) -> dict:
        return {"max_file_bytes": self.max_file_bytes, "max_pixels": self.max_pixels,
                "max_files_per_request": self.max_files_per_request,
                "max_images_per_project": self.max_images_per_project, "max_request_bytes": self.request_cap,
                "max_inflight_bytes": self.max_inflight_bytes}


@dataclass
class CheckedImage:
    """An upload that is a decodable image within the limits."""

    data: bytes
    name: str
    format: str
    width: int
    height: int
    sha256: str
    kept: Any  # what check_image's ``keep`` made of the decoded first frame (the frame itself is not kept)


def thumbnail_png(image: Image.Image) -> bytes:
    """A PNG at most :data:`THUMBNAIL_SIDE` pixels on a side, for the page."""
    thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
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
    at most :data:`MAX_NAME_LENGTH` characters like a class name (a longer one keeps its start and its extension,
    joined by an ellipsis). Only ever displayed, never used as a path."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if not is_unsafe_character(ch)).strip()
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, suffix = name.rpartition(".")
        keep = f".{suffix}" if dot and 0 < len(suffix) <= 10 else ""
        name = (stem if keep else name)[:MAX_NAME_LENGTH - len(keep) - 1].rstrip() + "\u2026" + keep
    return name or fallback


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
    if all(unicodedata.category(ch) in INVISIBLE_CATEGORIES or ch.isspace() for ch in name):
        raise BadName(f"the {what} name shows nothing (only invisible characters such as U+{ord(name[0]):04X}): "
                      "give a name people can read")
    return name


def check_image(data: bytes, name: str, limits: Limits, keep: Callable[[Image.Image], Any] = thumbnail_png
                ) -> CheckedImage:
    """Verify one upload by its content; raises :class:`TooLarge`, :class:`NotAnImage` or :class:`BadImage`
    with a one-line message naming the file. ``keep(image)`` makes what the caller needs of the decoded first
    frame (by default the thumbnail PNG); the frame itself is released before returning."""
    if len(data) > limits.max_file_bytes:
        raise TooLarge(f"'{name}' is {size_text(len(data))}; the limit is {size_text(limits.max_file_bytes)} per "
                       "file: upload a smaller image")
    if not data:
        raise BadImage(f"'{name}' is empty (0 bytes)")
    image = _open(data, name, limits)
    try:
        if image.format not in ALLOWED_FORMATS:
            raise NotAnImage(f"'{name}' is {article(image.format)} {image.format} file; accepted: "
                             f"{', '.join(ALLOWED_FORMATS)}")
        width, height = image.size
        if width < 1 or height < 1:
            raise BadImage(f"'{name}' has no pixels ({width}x{height})")
        if width * height > limits.max_pixels:
            raise TooLarge(f"'{name}' is {width}x{height} = {width * height:,} pixels; the limit is "
                           f"{limits.max_pixels:,} (decompression-bomb protection): resize it first")
        _decode(image, name)
        try:
            kept = keep(image)
        except MemoryError:
            raise
        except Exception as exc:  # an unusual pixel mode PIL decodes but cannot convert
            raise BadImage(f"'{name}' is {article(image.format)} {image.format} image in mode {image.mode} that "
                           f"cannot be converted ({_reason(exc)}): save it as an ordinary RGB image") from None
    finally:
        image.close()
    return CheckedImage(data, name, image.format, width, height, hashlib.sha256(data).hexdigest(), kept)


def _open(data: bytes, name: str, limits: Limits) -> Image.Image:
    """PIL's image for ``data``, header read, nothing decoded yet. PIL's plugins raise all sorts of exceptions
    on corrupt headers (struct.error, IndexError, KeyError, TypeError, ZeroDivisionError, ...): any of them is
    a :class:`BadImage`, never a server error; only running out of memory is not caught."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise NotAnImage(f"'{name}' is not an image (its content is not PNG, JPEG, GIF, BMP, WebP or TIFF)") \
            from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"'{name}' has too many pixels to decode safely: the limit is {limits.max_pixels:,}") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise BadImage(f"'{name}' cannot be read as an image ({_reason(exc)})") from None


def _decode(image: Image.Image, name: str) -> None:
    """Decode the first frame fully (proves the file is not truncated); a failure of any kind but running out
    of memory is a :class:`BadImage`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)
            image.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise BadImage(f"'{name}' is a damaged {image.format} image ({_reason(exc)}): upload it again or export it "
                       "anew") from None


def size_text(count: int) -> str:
    """``22,000,000 bytes (21.0 MiB)``: exact bytes, and the binary megabytes the limits are set in (KiB below
    one MiB), so two different sizes never print alike."""
    return f"{count:,} bytes ({count / 2**20:.1f} MiB)" if count >= 2**20 else f"{count:,} bytes ({count / 2**10:.1f} KiB)"


def article(word: str) -> str:
    """'an' before a vowel sound as read aloud (an ICO, an MPO, a PNG, a JPEG), else 'a'."""
    return "an" if word[:1].upper() in "AEIOU" or word[:1].upper() in "FHLMNRSX" and word.isupper() else "a"


def _reason(exc: Exception) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
