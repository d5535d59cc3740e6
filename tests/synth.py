"""Generated test data: images of simple coloured shapes with YOLO labels, and a tiny real model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

#: The shapes dataset's classes, named after product classes so models trained on it map by identity.
SHAPE_CLASSES = ("litter", "car")
#: The COCO YOLO11n in the registry (also the pseudo-label teacher): the tiny test models start from it.
COCO_MODEL = "yolo11n-coco-interim"


def draw_sample(
    rng: np.random.Generator, size: int = 160
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One image with 1-3 objects: red filled squares are 'litter', blue circles are 'car'."""
    image = np.full((size, size, 3), rng.integers(90, 200, 3), np.uint8)
    image = cv2.add(image, rng.integers(0, 30, (size, size, 3), dtype=np.uint8))
    labels = []
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(0, 2))
        s = int(rng.integers(size // 6, size // 3))
        x, y = (int(v) for v in rng.integers(0, size - s, 2))
        if cls == 0:
            cv2.rectangle(image, (x, y), (x + s, y + s), (20, 20, 230), -1)
        else:
            cv2.circle(image, (x + s // 2, y + s // 2), s // 2, (230, 60, 20), -1)
        labels.append((cls, (x + s / 2) / size, (y + s / 2) / size, s / size, s / size))
    return image, labels


def make_shapes_dataset(root: Path, n_train: int = 24, n_val: int = 8, seed: int = 0, size: int = 160) -> Path:
    """A YOLO-format dataset under ``root``; returns its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, labels = draw_sample(rng, size)
            cv2.imwrite(str(root / split / "images" / f"{i:03d}.jpg"), image)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (root / split / "labels" / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(
        yaml.safe_dump(
            {"path": str(root), "train": "train/images", "val": "val/images", "names": dict(enumerate(SHAPE_CLASSES))}
        )
    )
    return data


def train_tiny_model(workdir: Path, epochs: int = 10, imgsz: int = 160) -> Path:
    """Train a real YOLO11n on the shapes dataset (from yaml, weights of the shipped COCO model, whose
    80-class head loads whole: the product model's 10-class head would not); returns best.pt."""
    from models.registry import resolve
    from training import ultra

    ultra.setup()
    from ultralytics import YOLO

    data = make_shapes_dataset(workdir / "shapes")
    model = YOLO("yolo11n.yaml").load(str(resolve(COCO_MODEL).file("pt")))  # yaml: never a download
    model.train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=8,
        workers=0,
        device="cpu",
        project=str(workdir / "runs"),
        name="tiny",
        exist_ok=True,
        plots=False,
        verbose=False,
        amp=False,
        mosaic=0.0,
        val=True,
    )
    return workdir / "runs" / "tiny" / "weights" / "best.pt"


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid, fully encoded black RGB PNG of the given size (a decompression bomb: tiny file, huge image)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (width * 3 + 1)
    comp = zlib.compressobj(1)
    rows_per_block = max(1, (1 << 24) // len(row))
    block = row * rows_per_block
    parts = []
    done = 0
    while done < height:
        n = min(rows_per_block, height - done)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        done += n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """JPEG bytes of a BGR image carrying an EXIF orientation tag."""
    import io

    from PIL import Image

    pil = Image.fromarray(image[:, :, ::-1])
    exif = pil.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- videos


def write_h264(path: Path, frames, fps: int = 10, gop: int | None = None, crf: int = 23) -> Path:
    """Encode BGR frames (an iterable of equal-size arrays, even sides) to an H.264 MP4 / MPEG-TS with PyAV.

    ``gop``: frames between keyframes (default: one keyframe per second), fixed (no scene-cut keyframes).
    """
    from fractions import Fraction

    import av

    gop = gop or fps
    with av.open(str(path), "w") as out:
        stream = None
        for image in frames:
            if stream is None:
                stream = out.add_stream("libx264", rate=Fraction(fps))
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {
                    "crf": str(crf),
                    "preset": "veryfast",
                    "g": str(gop),
                    "keyint_min": str(gop),
                    "sc_threshold": "0",
                    "bf": "0",
                }
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return path


def still_scene(
    image: np.ndarray, seconds: float, fps: int = 10, noise: float = 2.0, drift: float = 0.08, seed: int = 0
):
    """Frames of a fixed camera on a still scene: sensor noise and a slow light change (±``drift`` brightness)."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    image = image[: h - h % 2, : w - w % 2].astype(np.float32)
    n = int(seconds * fps)
    for i in range(n):
        gain = 1.0 + drift * np.sin(2 * np.pi * i / max(n, 1))
        frame = image * gain + rng.normal(0, noise, image.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)
