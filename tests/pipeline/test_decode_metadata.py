"""EXIF capture time and GPS position (pipeline.decode.read_metadata), and HEIC through the same checks."""

import io
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from pipeline.decode import HEIF_SUPPORT, ImageReadError, decode_image, probe_image, read_metadata

SHANGHAI = ZoneInfo("Asia/Shanghai")


def encode(fmt: str = "JPEG", size=(120, 80), **tags) -> bytes:
    """An image with the given EXIF: taken, offset, lat, lon, gps_date, gps_time, make, model, orientation."""
    im = Image.new("RGB", size, (200, 40, 40))
    im.paste((20, 20, 220), (0, 0, size[0] // 2, size[1]))  # left half blue: orientation is visible
    exif = im.getexif()
    sub, gps = exif.get_ifd(ExifTags.IFD.Exif), exif.get_ifd(ExifTags.IFD.GPSInfo)
    if "orientation" in tags:
        exif[ExifTags.Base.Orientation] = tags["orientation"]
    if "make" in tags:
        exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = tags["make"], tags["model"]
    if "taken" in tags:
        sub[ExifTags.Base.DateTimeOriginal] = tags["taken"]
    if "offset" in tags:
        sub[ExifTags.Base.OffsetTimeOriginal] = tags["offset"]
    for key, ref, pos, neg in (
        ("lat", ExifTags.GPS.GPSLatitudeRef, "N", "S"),
        ("lon", ExifTags.GPS.GPSLongitudeRef, "E", "W"),
    ):
        if tags.get(key) is not None:
            value = tags[key]
            d = abs(value)
            deg, minutes = int(d), int((d - int(d)) * 60)
            seconds = round(((d - deg) * 60 - minutes) * 60, 4)
            gps[ref] = pos if value >= 0 else neg
            gps[ExifTags.GPS.GPSLatitude if key == "lat" else ExifTags.GPS.GPSLongitude] = (deg, minutes, seconds)
    if "gps_lat" in tags:  # a raw (degrees, minutes, seconds) value, as written
        gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = "N", tags["gps_lat"]
        gps[ExifTags.GPS.GPSLongitudeRef], gps[ExifTags.GPS.GPSLongitude] = "E", (121, 28, 25)
    if "gps_date" in tags:
        gps[ExifTags.GPS.GPSDateStamp] = tags["gps_date"]
        gps[ExifTags.GPS.GPSTimeStamp] = tags["gps_time"]
    buf = io.BytesIO()
    im.save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


def test_gps_position_in_each_hemisphere():
    north_east = read_metadata(encode(lat=31.2304, lon=121.4737))
    assert north_east.location == pytest.approx((31.2304, 121.4737), abs=1e-6)
    south_west = read_metadata(encode(lat=-33.8688, lon=-70.6693))
    assert south_west.location == pytest.approx((-33.8688, -70.6693), abs=1e-6)


def test_zero_zero_is_no_fix_and_missing_exif_is_empty():
    assert read_metadata(encode(lat=0.0, lon=0.0)).location is None
    meta = read_metadata(encode())
    assert meta.location is None and meta.taken_at is None and meta.camera is None
    assert meta.capture_time(SHANGHAI) == (None, "")


def test_capture_time_with_offset_is_taken_as_written():
    meta = read_metadata(encode(taken="2026:11:20 09:15:30", offset="+08:00", make="Apple", model="iPhone 13"))
    when, how = meta.capture_time(ZoneInfo("Europe/Amsterdam"))
    assert when == datetime(2026, 11, 20, 9, 15, 30, tzinfo=timezone(timedelta(hours=8)))
    assert how == "EXIF" and meta.camera == "Apple iPhone 13"


def test_capture_time_offset_recovered_from_gps_clock():
    meta = read_metadata(encode(taken="2026:11:20 09:15:30", gps_date="2026:11:20", gps_time=(1, 15, 29)))
    when, how = meta.capture_time(ZoneInfo("Europe/Amsterdam"))  # the GPS clock beats the assumption
    assert when.utcoffset() == timedelta(hours=8) and when.hour == 9
    assert "GPS" in how


def test_capture_time_without_offset_assumes_the_given_zone():
    meta = read_metadata(encode(taken="2026:07:01 18:00:00"))
    when, how = meta.capture_time(SHANGHAI)
    assert when == datetime(2026, 7, 1, 18, 0, tzinfo=SHANGHAI) and when.utcoffset() == timedelta(hours=8)
    assert how == "EXIF, no UTC offset: assumed Asia/Shanghai"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_metadata_from_png_and_webp(fmt):
    meta = read_metadata(encode(fmt, taken="2026:11:20 09:15:30", lat=22.5431, lon=114.0579))
    assert meta.taken_at == datetime(2026, 11, 20, 9, 15, 30)
    assert meta.location == pytest.approx((22.5431, 114.0579), abs=1e-6)


def test_malformed_exif_never_refuses_a_photo():
    data = encode(taken="yesterday-ish", offset="+8h")
    assert read_metadata(data).taken_at is None
    assert read_metadata(b"not an image at all").location is None
    unset = read_metadata(encode(taken="0001:01:01 00:00:00", gps_date="0001:01:01", gps_time=(0, 0, 0)))
    assert unset.taken_at is None and unset.capture_time(SHANGHAI) == (None, "")  # a clock never set: no time
    assert decode_image(data).shape == (80, 120, 3)


@pytest.mark.skipif(not HEIF_SUPPORT, reason="pillow-heif is not installed")
def test_heic_decodes_rotated_with_metadata_and_size_limit():
    data = encode("HEIF", orientation=6, taken="2026:11:20 09:15:30", offset="+08:00", lat=31.23, lon=121.47)
    assert probe_image(data)[0] == "heic"
    image = decode_image(data)
    assert image.shape == (120, 80, 3)  # orientation 6: shown rotated a quarter turn
    top = image[:30].reshape(-1, 3).mean(0)
    assert top[0] > 150 and top[2] < 100  # BGR: the blue left half is now on top
    meta = read_metadata(data)
    assert meta.location == pytest.approx((31.23, 121.47), abs=1e-6)
    assert meta.capture_time(SHANGHAI)[1] == "EXIF"
    with pytest.raises(ImageReadError, match="image too large: 80x120"):
        decode_image(data, "big.heic", max_pixels=5000)
    with pytest.raises(ImageReadError, match="corrupt"):
        decode_image(data[: len(data) // 2], "cut.heic")


def test_jpeg_orientation_and_gps_together():
    data = encode(orientation=8, lat=39.9042, lon=116.4074)
    image = decode_image(data)
    assert image.shape == (120, 80, 3)
    assert np.asarray(image[-30:]).reshape(-1, 3).mean(0)[0] > 150  # orientation 8: the blue half at the bottom
    assert read_metadata(data).location == pytest.approx((39.9042, 116.4074), abs=1e-6)


@pytest.mark.parametrize("offset", ["+25:00", "-24:00", "+24:00", "+05:60", "+99:99"])
def test_an_impossible_utc_offset_is_no_offset(offset):
    meta = read_metadata(encode(taken="2026:11:20 09:15:30", offset=offset))
    assert meta.taken_at == datetime(2026, 11, 20, 9, 15, 30)  # the time kept, the garbage offset dropped
    when, how = meta.capture_time(SHANGHAI)
    assert when == datetime(2026, 11, 20, 9, 15, 30, tzinfo=SHANGHAI) and how.startswith("EXIF, no UTC offset")
    latest = read_metadata(encode(taken="2026:11:20 09:15:30", offset="-23:59")).taken_at
    assert latest is not None and latest.utcoffset() == -timedelta(hours=23, minutes=59)  # the farthest valid


def test_hostile_exif_values_cost_their_field_never_the_photo():
    cases = {
        "zero-denominator time": dict(gps_date="2026:11:20", gps_time=(IFDRational(1, 0), 0, 0)),
        "zero-denominator latitude": dict(gps_lat=(IFDRational(0, 0), 0, 0), lat=None),
        "a number for a date": dict(gps_date=20261120, gps_time=(1, 2, 3)),
        "a number for an offset": dict(taken="2026:11:20 09:15:30", offset=8),
        "a huge GPS time": dict(gps_date="2026:11:20", gps_time=(4_000_000_000, 0, 0)),
    }
    for name, tags in cases.items():
        data = encode(make="Apple", model="iPhone 13", **tags)
        meta = read_metadata(data)
        assert meta.gps_time is None and meta.location is None, name
        assert meta.camera == "Apple iPhone 13", name  # the other fields are still read
        assert decode_image(data).shape == (80, 120, 3), name


def test_a_gps_time_that_runs_past_the_plausible_years_is_no_time():
    meta = read_metadata(encode(gps_date="2999:12:31", gps_time=(48, 0, 0)))  # the stamps add up to 3001-01-02
    assert meta.gps_time is None and meta.capture_time(SHANGHAI) == (None, "")
    last = read_metadata(encode(gps_date="2999:12:31", gps_time=(23, 59, 59))).gps_time
    assert last == datetime(2999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
