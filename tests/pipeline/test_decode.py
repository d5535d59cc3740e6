import io

import cv2
import numpy as np
import pytest
from PIL import Image
from synth import huge_png, jpeg_with_orientation

from pipeline.decode import ImageReadError, decode_image, iter_image_paths, probe_image, read_image


@pytest.fixture
def gradient() -> np.ndarray:
    """A 60x100 BGR image whose left half is white: orientation changes are visible."""
    image = np.zeros((60, 100, 3), np.uint8)
    image[:, :50] = 255
    return image


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
def test_reads_each_supported_format(tmp_path, gradient, ext):
    path = tmp_path / f"img{ext}"
    assert cv2.imwrite(str(path), gradient)
    image = read_image(path)
    assert image.shape == (60, 100, 3) and image.dtype == np.uint8
    assert image[:, :40].mean() > 200 and image[:, 60:].mean() < 50


@pytest.mark.parametrize(
    ("orientation", "shape", "white_side"),
    [(1, (60, 100), "left"), (6, (100, 60), "top"), (3, (60, 100), "right"), (8, (100, 60), "bottom")],
)
def test_exif_orientation_is_applied(tmp_path, gradient, orientation, shape, white_side):
    path = tmp_path / "rot.jpg"
    path.write_bytes(jpeg_with_orientation(gradient, orientation))
    image = read_image(path)
    assert image.shape[:2] == shape
    h, w = shape
    halves = {
        "left": image[:, : w // 3],
        "right": image[:, -w // 3 :],
        "top": image[: h // 3],
        "bottom": image[-h // 3 :],
    }
    assert halves[white_side].mean() > 200


def test_empty_file_names_file_and_reason(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: empty file"):
        read_image(path)


def test_text_file_with_image_name_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image"):
        read_image(path)


def test_truncated_jpeg_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    _, enc = cv2.imencode(".jpg", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(enc.tobytes()[: len(enc) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: corrupt or truncated"):
        read_image(path)


def test_decompression_bomb_refused_before_decoding():
    data = huge_png(30000, 30000)
    assert len(data) < 20_000_000  # small file ...
    with pytest.raises(ImageReadError, match="image too large: 30000x30000"):
        decode_image(data, "bomb.png")  # ... refused from its header, never decoded (would be 2.7 GB)


def test_unsupported_format_is_named(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, "TIFF")
    with pytest.raises(ImageReadError, match="unsupported image format TIFF"):
        probe_image(buf.getvalue(), "x.tiff")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


def test_iter_image_paths_expands_folders_globs_and_files(tmp_path, gradient):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.png", "a/b/3.webp", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), gradient)
    (tmp_path / "a" / "readme.txt").write_text("x")
    odd = tmp_path / "odd.dat"
    odd.write_text("x")
    found = iter_image_paths([tmp_path / "a", str(tmp_path / "*.jpg"), odd, tmp_path / "a" / "1.jpg"])
    names = [p.name for p in found]
    assert names == ["1.jpg", "2.png", "3.webp", "c.jpg", "odd.dat"]  # explicit files kept, duplicates dropped
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        iter_image_paths([tmp_path / "missing.jpg"])
