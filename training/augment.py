"""Camera-condition augmentation for training: CCTV (motion blur, low light and noise, JPEG, haze, rain,
perspective) and patrol photos (night, flash, defocus), as albumentations transforms.

The list from :func:`build_augmentations` goes to ultralytics' ``augmentations`` train argument: its
``Albumentations`` step applies it to every training sample after mosaic/affine, with the boxes
transformed together with the image (spatial transforms such as :class:`~albumentations.Perspective`
move the boxes). :func:`preview_grid` draws augmented training samples with their boxes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.classes import CLASS_IDS
from pipeline.annotate import draw_detections
from pipeline.detections import Detections
from pipeline.files import write_image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
import albumentations as A


class AugmentConfig(BaseModel):
    """Probabilities of the camera-condition augmentations (each applied independently per training sample)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Apply the camera-condition augmentations at all")
    motion_blur: float = Field(0.15, ge=0, le=1, description="Motion blur of moving CCTV cameras or objects")
    defocus: float = Field(0.08, ge=0, le=1, description="Out-of-focus / shaken hand-held patrol photos")
    low_light: float = Field(0.15, ge=0, le=1, description="Dusk or underexposed CCTV: darker gamma plus sensor noise")
    night: float = Field(
        0.08, ge=0, le=1, description="Night under street lights: dark, warm colour cast, strong ISO noise"
    )
    flash: float = Field(
        0.05, ge=0, le=1, description="Night photo with on-camera flash: bright near centre, dark surroundings"
    )
    jpeg: float = Field(0.25, ge=0, le=1, description="Heavy JPEG compression artefacts of CCTV streams")
    haze: float = Field(0.06, ge=0, le=1, description="Haze or fog")
    rain: float = Field(0.05, ge=0, le=1, description="Rain streaks")
    perspective: float = Field(
        0.15, ge=0, le=1, description="Perspective warp of a high, tilted camera (boxes are warped too)"
    )
    jpeg_quality: tuple[int, int] = Field((15, 60), description="JPEG quality range for the jpeg augmentation")


class CameraFlash(A.ImageOnlyTransform):
    """A night photo taken with the camera's flash: a bright, slightly overexposed spot that falls off
    to dark surroundings (inverse-square look), with a cold flash white balance."""

    def __init__(
        self,
        darkness: tuple[float, float] = (0.1, 0.35),
        strength: tuple[float, float] = (0.3, 0.7),
        sigma: tuple[float, float] = (0.25, 0.5),
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.darkness = darkness
        self.strength = strength
        self.sigma = sigma

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        rnd = self.py_random
        return {
            "centre": (rnd.uniform(0.35, 0.65), rnd.uniform(0.4, 0.75)),
            "spread": rnd.uniform(*self.sigma),
            "ambient": rnd.uniform(*self.darkness),
            "boost": rnd.uniform(*self.strength),
        }

    def apply(
        self,
        img: np.ndarray,
        centre: tuple[float, float] = (0.5, 0.5),
        spread: float = 0.35,
        ambient: float = 0.3,
        boost: float = 0.5,
        **params: Any,
    ) -> np.ndarray:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d2 = ((xx / w - centre[0]) ** 2 + (yy / h - centre[1]) ** 2) / (2 * spread**2)
        light = ambient + (1.0 - ambient + boost) * np.exp(-d2)
        out = img.astype(np.float32) * (light[..., None] if img.ndim == 3 else light)
        if img.ndim == 3 and img.shape[2] == 3:
            out *= np.array([1.06, 1.0, 0.94], np.float32)  # cold flash white balance (BGR)
        return np.clip(out, 0, 255).astype(np.uint8)


class StreetLightCast(A.ImageOnlyTransform):
    """The warm colour cast of sodium and old LED street lights (the image is BGR, as ultralytics passes it)."""

    def __init__(self, warmth: tuple[float, float] = (0.08, 0.25), p: float = 0.5):
        super().__init__(p=p)
        self.warmth = warmth

    def get_params(self) -> dict[str, Any]:
        return {"amount": self.py_random.uniform(*self.warmth)}

    def apply(self, img: np.ndarray, amount: float = 0.15, **params: Any) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != 3:
            return img
        gains = np.array([1.0 - amount, 1.0 - amount / 4, 1.0 + amount / 2], np.float32)  # less blue, more red
        return np.clip(img.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def build_augmentations(cfg: AugmentConfig) -> list[A.BasicTransform]:
    """The albumentations transforms for ultralytics' ``augmentations`` argument (empty when disabled)."""
    if not cfg.enabled:
        return []
    candidates: list[A.BasicTransform] = [
        A.MotionBlur(blur_limit=(5, 15), p=cfg.motion_blur),
        A.Defocus(radius=(2, 5), alias_blur=(0.1, 0.3), p=cfg.defocus),
        A.Sequential(
            [
                A.RandomGamma(gamma_limit=(150, 280), p=1.0),
                A.GaussNoise(std_range=(0.03, 0.09), p=1.0),
            ],
            p=cfg.low_light,
        ),
        A.Sequential(
            [
                A.RandomBrightnessContrast(brightness_limit=(-0.45, -0.2), contrast_limit=(-0.3, 0.0), p=1.0),
                StreetLightCast(p=1.0),
                A.ISONoise(color_shift=(0.02, 0.05), intensity=(0.2, 0.5), p=1.0),
            ],
            p=cfg.night,
        ),
        CameraFlash(p=cfg.flash),
        A.ImageCompression(quality_range=cfg.jpeg_quality, p=cfg.jpeg),
        A.RandomFog(fog_coef_range=(0.15, 0.4), alpha_coef=0.1, p=cfg.haze),
        A.RandomRain(
            slant_range=(-12, 12), drop_length=15, drop_width=1, blur_value=3, brightness_coefficient=0.8, p=cfg.rain
        ),
        A.Perspective(scale=(0.02, 0.08), keep_size=True, fit_output=False, p=cfg.perspective),
    ]
    return [t for t in candidates if t.p > 0]


def transform_names(transforms: list[Any]) -> list[str]:
    """Class names of a transform list, compositions flattened (e.g. ``Sequential(RandomGamma+GaussNoise)``)."""
    names = []
    for t in transforms:
        if isinstance(t, A.BaseCompose):
            names.append(f"{type(t).__name__}({'+'.join(type(x).__name__ for x in t.transforms)})")
        else:
            names.append(type(t).__name__)
    return names


def preview_grid(dataset: Any, out: Path, n: int = 16, seed: int = 0, cols: int = 4) -> Path:
    """Draw ``n`` augmented samples of an ultralytics training dataset with their boxes into a PNG grid."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    names = dataset.data["names"]
    tiles = []
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(dataset), size=min(n, len(dataset)), replace=len(dataset) < n):
        sample = dataset[int(i)]
        img = sample["img"].numpy().transpose(1, 2, 0)[:, :, ::-1].copy()  # CHW RGB -> HWC BGR
        h, w = img.shape[:2]
        cx, cy, bw, bh = (sample["bboxes"].numpy().reshape(-1, 4) * [w, h, w, h]).T
        ids = sample["cls"].numpy().reshape(-1).astype(int)
        cls = [names[c] for c in ids]
        dets = Detections(
            np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1),
            np.ones(len(cls), np.float32),
            np.array([CLASS_IDS.get(n, c % len(CLASS_IDS)) for n, c in zip(cls, ids, strict=True)], np.int64),
        )
        img = draw_detections(img, dets, labels=cls, thickness=1)
        tiles.append(cv2.resize(img, (320, 320)))
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 114))
    rows = [np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(out, np.concatenate(rows, axis=0))
    return out
