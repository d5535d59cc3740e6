"""Reading images safely: format sniffing, size limits before decoding, EXIF orientation, metadata.

Every failure is an :class:`ImageReadError` whose message names the file and the reason, so a
batch job can report it and go on. :func:`read_metadata` is the one place that reads what a photo
says about itself (capture time, GPS position, camera). HEIC/HEIF photos (iPhones) are read when
``pillow-heif`` is installed, through the same checks as every other format.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import ExifTags, Image

from pipeline.cases import plausible_time

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # we report corrupt files ourselves

try:  # HEIC/HEIF (iPhone photos): optional, decoded by libheif through Pillow
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:  # pragma: no cover - pillow-heif is a base dependency, but a build may lack a wheel
    HEIF_SUPPORT = False

SUPPORTED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
if HEIF_SUPPORT:
    SUPPORTED_FORMATS["HEIF"] = "heic"
#: The formats read, for people (messages, error replies).
FORMAT_NAMES = "JPEG, PNG, WebP, BMP or HEIC/HEIF" if HEIF_SUPPORT else "JPEG, PNG, WebP or BMP"
#: Suffixes picked up from folders and globs (HEIC always: without support it is reported, not skipped).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".heic", ".heif")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
#: Refuse images with more pixels than this before decoding them (a 30000x30000 PNG is 2.7 GB decoded).
MAX_PIXELS = 120_000_000
#: Refuse files larger than this before reading them.
MAX_FILE_BYTES = 64 * 1024 * 1024

T = TypeVar("T")

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
        if not HEIF_SUPPORT and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            raise ImageReadError(
                source, "HEIC/HEIF photo, but HEIC support is not installed (pip install pillow-heif)"
            ) from None
        raise ImageReadError(source, "not an image (unrecognised format or corrupt header)") from None
    if fmt not in SUPPORTED_FORMATS:
        raise ImageReadError(source, f"unsupported image format {fmt}; use {FORMAT_NAMES}")
    if width <= 0 or height <= 0:
        raise ImageReadError(source, f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageReadError(source, f"image too large: {width}x{height} pixels (limit {max_pixels:,})")
    return SUPPORTED_FORMATS[fmt], width, height


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to a BGR uint8 array with EXIF orientation applied."""
    kind, _, _ = probe_image(data, source, max_pixels)
    if kind == "heic":  # libheif applies the HEIF rotation/mirror itself
        try:
            with Image.open(io.BytesIO(data)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception:
            raise ImageReadError(source, "corrupt or truncated image data") from None
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
    if image is None:
        raise ImageReadError(source, "corrupt or truncated image data")
    return image


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file to BGR with EXIF orientation applied; :class:`ImageReadError` on any failure."""
    return decode_image(read_file(path), str(path), max_pixels)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file, refusing folders, missing and oversized files with a clear reason."""
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
    return data


# ------------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class ImageMetadata:
    """What a photo's EXIF says about where, when and with what it was taken (all optional)."""

    taken_at: datetime | None = None  # DateTimeOriginal; aware when the EXIF gives an offset, else naive
    gps_time: datetime | None = None  # GPS date + time stamp, always UTC
    location: tuple[float, float] | None = None  # (lat, lon) WGS-84
    camera: str | None = None  # "Make Model"

    def capture_time(self, assume_tz: tzinfo) -> tuple[datetime | None, str]:
        """Timezone-aware capture time and how it was obtained (for people: the report states it).

        EXIF local time with its UTC offset when the camera wrote one; else with the offset implied by
        the GPS clock (UTC) when the two agree to a plausible offset; else taken as local time in
        ``assume_tz``; else GPS time alone. ``(None, "")`` when the photo says nothing.
        """
        local = self.taken_at
        if local is not None and local.tzinfo is not None:
            return local, "EXIF"
        if local is not None and self.gps_time is not None:
            offset = local - self.gps_time.replace(tzinfo=None)
            quarters = round(offset / timedelta(minutes=15))
            if abs(offset - quarters * timedelta(minutes=15)) <= timedelta(minutes=2) and abs(quarters) <= 14 * 4:
                return local.replace(tzinfo=timezone(quarters * timedelta(minutes=15))), "EXIF, offset from GPS clock"
        if local is not None:
            return local.replace(tzinfo=assume_tz), f"EXIF, no UTC offset: assumed {tz_name(assume_tz)}"
        if self.gps_time is not None:
            return self.gps_time, "GPS clock (UTC)"
        return None, ""


def tz_name(tz: tzinfo) -> str:
    """A readable name for a timezone (IANA key when it has one, else its UTC offset)."""
    key = getattr(tz, "key", None)
    if key:
        return key
    offset = datetime.now(tz).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    return f"UTC{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def read_metadata(data: bytes) -> ImageMetadata:
    """Capture time, GPS position and camera from a photo's EXIF (JPEG, PNG, WebP, HEIC).

    Metadata is a bonus, never a reason to refuse a photo: malformed or missing EXIF gives empty fields.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            exif = im.getexif()
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:
        return ImageMetadata()
    taken = _field(
        _exif_datetime,
        _field(lambda: sub.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)),
        _field(lambda: sub.get(ExifTags.Base.OffsetTimeOriginal) or sub.get(ExifTags.Base.OffsetTime)),
    )
    return ImageMetadata(taken, _field(_gps_time, gps), _field(_gps_position, gps), _field(_camera, exif))


def _field(read: Callable[..., T], *args: object) -> T | None:
    """``read(*args)``, or None when the EXIF it reads is hostile enough to make it raise anyway: one field's
    bad value (a type, a size, an encoding no camera writes) must cost that field, never the photo."""
    try:
        return read(*args)
    except Exception:
        return None


def _camera(exif: Image.Exif) -> str | None:
    """'Make Model' (the model alone when it already starts with the make); None when neither is given."""
    make, model = (str(exif.get(t) or "").strip("\x00 ") for t in (ExifTags.Base.Make, ExifTags.Base.Model))
    return (model if model.startswith(make) else f"{make} {model}".strip()) or None


def _exif_datetime(value: object, offset: object) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (+ optional '+08:00') -> datetime; None when absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        moment = plausible_time(datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S"))
    except ValueError:  # malformed, or a clock that was never set (0001:01:01)
        return None
    zone = _exif_offset(offset)
    return moment.replace(tzinfo=zone) if zone is not None else moment


def _exif_offset(value: object) -> timezone | None:
    """EXIF '+08:00' -> a fixed zone; None when absent or malformed: minutes past 59 or 24 hours or more
    (no zone is that far from UTC; such a value is garbage, and the time is read as if it had no offset)."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"([+-])(\d{2}):(\d{2})", value.strip("\x00 "))
    if not match or int(match[2]) >= 24 or int(match[3]) >= 60:
        return None
    sign = 1 if match[1] == "+" else -1
    return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3])))


def _dms(value: object) -> float | None:
    """EXIF degrees/minutes/seconds rationals -> decimal degrees."""
    try:
        d, m, s = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if any(v != v for v in (d, m, s)):  # NaN from a 0/0 rational
        return None
    return d + m / 60 + s / 3600


def _gps_position(gps: dict) -> tuple[float, float] | None:
    """(lat, lon) from a GPS IFD; None when absent, void, out of range or the (0, 0) 'no fix' value."""
    if str(gps.get(ExifTags.GPS.GPSStatus, "A")).strip("\x00 ") == "V":  # receiver said: measurement void
        return None
    lat, lon = _dms(gps.get(ExifTags.GPS.GPSLatitude)), _dms(gps.get(ExifTags.GPS.GPSLongitude))
    if lat is None or lon is None:
        return None
    if str(gps.get(ExifTags.GPS.GPSLatitudeRef, "N")).strip("\x00 ").upper() == "S":
        lat = -lat
    if str(gps.get(ExifTags.GPS.GPSLongitudeRef, "E")).strip("\x00 ").upper() == "W":
        lon = -lon
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return round(lat, 7), round(lon, 7)


def _gps_time(gps: dict) -> datetime | None:
    """UTC time from the GPS date and time stamps; None when either is absent or malformed, or when the time
    they add up to is outside the plausible years (a time stamp of 48 h on 2999-12-31 is in 3001)."""
    date, hms = gps.get(ExifTags.GPS.GPSDateStamp), gps.get(ExifTags.GPS.GPSTimeStamp)
    if not isinstance(date, str) or hms is None:
        return None
    try:
        day = datetime.strptime(date.strip("\x00 ")[:10], "%Y:%m:%d").replace(tzinfo=timezone.utc)
        h, m, s = (float(v) for v in hms)
        return plausible_time(day + timedelta(hours=h, minutes=m, seconds=s))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None


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
