"""Reading images safely: format sniffing, size limits before decoding, EXIF orientation.

Every failure is an :class:`ImageReadError` whose message names the file and the reason, so a
batch job can report it and go on.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # we report corrupt files ourselves

SUPPORTED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: Refuse images with more pixels than this before decoding them (a 30000x30000 PNG is 2.7 GB decoded).
MAX_PIXELS = 120_000_000
#: Refuse files larger than this before reading them.
MAX_FILE_BYTES = 64 * 1024 * 1024

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit, with a clearer message


class ImageReadError(ValueError):
    """An image could not be read; ``str()`` names the file and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def probe_image(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """Format and size of an encoded image from its header only; raises on anything we would not decode."""
    if not data:
        raise ImageReadError(source, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format or "", im.size
    except Exception:
        raise ImageReadError(source, "not an image (unrecognised format or corrupt header)") from None
    if fmt not in SUPPORTED_FORMATS:
        raise ImageReadError(source, f"unsupported image format {fmt}; use JPEG, PNG, WebP or BMP")
    if width <= 0 or height <= 0:
        raise ImageReadError(source, f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageReadError(source, f"image too large: {width}x{height} pixels (limit {max_pixels:,})")
    return SUPPORTED_FORMATS[fmt], width, height


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array with EXIF orientation applied."""
    probe_image(data, source, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
    if image is None:
        raise ImageReadError(source, "corrupt or truncated image data")
    return image


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file to BGR with EXIF orientation applied; :class:`ImageReadError` on any failure."""
    source = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ImageReadError(source, f"file too large: {size:,} bytes (limit {MAX_FILE_BYTES:,})")
        data = Path(path).read_bytes()
    except ImageReadError:
        raise
    except IsADirectoryError:
        raise ImageReadError(source, "is a directory") from None
    except FileNotFoundError:
        raise ImageReadError(source, "no such file") from None
    except OSError as exc:
        raise ImageReadError(source, f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, source, max_pixels)


def iter_image_paths(inputs: Iterable[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated file list.

    Files named explicitly are kept whatever their suffix (so a bad file is reported, not skipped);
    folders and globs contribute files with an image suffix. A path that matches nothing raises
    ``FileNotFoundError`` naming it.
    """
    seen: dict[Path, None] = {}
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(text):
            found = sorted(
                Path(p)
                for p in glob.glob(text, recursive=True)
                if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            found = []
        if not found and not path.is_dir():
            raise FileNotFoundError(f"{text}: no such file, folder or matching images")
        for p in found:
            seen.setdefault(p, None)
    return list(seen)
