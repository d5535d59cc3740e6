"""Synthetic small ads (小广告): printed flyers, strips, stickers and stamped/sprayed numbers pasted onto
real street and facade photos, with their boxes.

Real labelled small ads are few (the facade set's ``win_ad``, posters behind shop windows). The
illegal ads a city bureau files cases for look different: slips of cheap paper with a service
(办证, 开锁, 疏通, 招聘, 贷款, ...) and a phone number, stuck on walls, poles, doors, bins and windows,
often torn, taped, faded, scraped half off, or stamped straight onto the wall.

Two small building blocks and one assembler:

* :func:`render_ad` draws one ad (RGBA, plus the mask of its paper) with the subset CJK fonts shipped
  in ``datasets/assets/fonts`` and wears it (paper texture, folds, wrinkles, dirt, fading, torn edges,
  tape, scraping);
* :func:`paste_ad` warps an ad onto a photo with perspective, matches local lighting, colour, blur and
  noise, and returns the ad's visible box;
* :func:`synthesize` places one to several ads on plausible surfaces of a background (doors, windows,
  bins, walls; clusters like a pole covered with slips), keeps the background's own labels, and returns
  the image and its labels. Each image has its own random stream (``seed``, index): reproducible and
  independent of the others.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from datasets.samples import Sample, xywhn_to_xyxy, xyxy_to_xywhn
from datasets.yolo import write_label_file
from models.classes import CLASS_IDS
from pipeline.decode import ImageReadError, read_image
from pipeline.detections import box_ios
from pipeline.files import safe_stem, write_image

ASSETS = Path(__file__).resolve().parent / "assets"
FONTS_DIR = ASSETS / "fonts"
SMALL_AD = CLASS_IDS["small_ad"]
#: Own-label classes an ad may be stuck on (an ad on a bin leaves the bin a bin).
SURFACE_CLASSES = {CLASS_IDS["garbage_bin"], CLASS_IDS["overflowing_bin"]}
#: Source classes dropped by mappings that are still good surfaces (facade doors, windows, arches).
CONTEXT_SURFACES = {"door": "door", "window": "window", "arch": "wall"}
#: Smallest visible ad side (pixels) that gets a box; smaller placements are retried.
MIN_AD_PIXELS = 14

# (R, G, B) paper colours: mostly white and pale tints, some strong
PAPERS = [
    (246, 245, 238),
    (250, 250, 250),
    (238, 236, 225),
    (250, 240, 170),
    (252, 226, 120),
    (250, 205, 210),
    (215, 232, 250),
    (214, 240, 214),
    (255, 214, 160),
    (236, 66, 56),
    (250, 250, 250),
    (244, 242, 232),
]
INKS = [(210, 20, 25), (20, 20, 22), (18, 40, 150), (200, 10, 10), (30, 30, 30), (10, 90, 40)]
STICKERS = [(250, 210, 20), (235, 40, 40), (30, 90, 200), (20, 150, 80), (250, 130, 20), (240, 240, 240)]


# ------------------------------------------------------------------------------------------------ text


@dataclass(frozen=True)
class AdTexts:
    """Services (headline choices and body lines), contact labels and extra slogans."""

    services: list[dict]
    contact: list[str]
    extra: list[str]


@lru_cache(maxsize=1)
def ad_texts() -> AdTexts:
    """The ad texts shipped in ``datasets/assets/ad_texts.yaml``."""
    doc = yaml.safe_load((ASSETS / "ad_texts.yaml").read_text(encoding="utf-8"))
    return AdTexts(doc["services"], doc["contact"], doc["extra"])


@lru_cache(maxsize=1)
def font_files() -> dict[str, Path]:
    """The shipped subset fonts by role: ``bold``, ``regular``, ``serif``."""
    files = {
        "bold": FONTS_DIR / "AdSans-Bold.otf",
        "regular": FONTS_DIR / "AdSans-Regular.otf",
        "serif": FONTS_DIR / "AdSerif-Bold.otf",
    }
    for f in files.values():
        if not f.is_file():
            raise FileNotFoundError(f"{f}: font missing; rebuild with python datasets/assets/make_fonts.py")
    return files


@lru_cache(maxsize=256)
def _font(role: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_files()[role]), max(size, 6))


def phone_number(rng: np.random.Generator) -> str:
    """A made-up Chinese mobile or landline number in one of the usual printed forms."""
    if rng.random() < 0.82:
        digits = "1" + str(rng.choice(list("3456789"))) + "".join(str(d) for d in rng.integers(0, 10, 9))
        form = rng.integers(0, 3)
        if form == 0:
            return digits
        sep = " " if form == 1 else "-"
        return f"{digits[:3]}{sep}{digits[3:7]}{sep}{digits[7:]}"
    area = str(rng.choice(["010", "021", "022", "023", "0571", "025", "027", "028", "0755", "020"]))
    return f"{area}-{''.join(str(d) for d in rng.integers(0, 10, 8 if len(area) == 3 else 7))}"


def _fit(draw: ImageDraw.ImageDraw, text: str, role: str, max_w: float, max_h: float) -> ImageFont.FreeTypeFont:
    """The largest font of ``role`` whose rendering of ``text`` fits ``max_w`` x ``max_h``."""
    lo, hi = 6, max(int(max_h * 1.4), 7)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=_font(role, mid))
        if x1 - x0 <= max_w and y1 - y0 <= max_h:
            lo = mid
        else:
            hi = mid - 1
    return _font(role, lo)


def _text_centered(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    text: str,
    role: str,
    fill: tuple,
    stroke: int = 0,
) -> None:
    x0, y0, x1, y1 = box
    font = _fit(draw, text, role, (x1 - x0), (y1 - y0))
    bx0, by0, bx1, by1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    x = x0 + (x1 - x0 - (bx1 - bx0)) / 2 - bx0
    y = y0 + (y1 - y0 - (by1 - by0)) / 2 - by0
    draw.text((x, y), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)


def qr_block(rng: np.random.Generator, size: int) -> np.ndarray:
    """A QR-code-like square (grey uint8, 0 = black): random modules and the three finder patterns."""
    n = 25
    m = (rng.random((n, n)) < 0.5).astype(np.uint8)
    finder = np.ones((7, 7), np.uint8)
    finder[1:6, 1:6] = 0
    finder[2:5, 2:5] = 1
    for y, x in ((0, 0), (0, n - 7), (n - 7, 0)):
        m[y : y + 8 if y == 0 else y + 7, x : x + 8 if x == 0 else x + 7] = 0
        m[y : y + 7, x : x + 7] = finder
    quiet = np.pad(1 - m, 2, constant_values=1) * 255
    return cv2.resize(quiet.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


# --------------------------------------------------------------------------------------------- render


@dataclass
class Ad:
    """One rendered ad: ``rgba`` (H, W, 4) uint8 and the mask of its paper (or ink) that its box covers."""

    rgba: np.ndarray
    paper: np.ndarray
    kind: str
    text: str = ""


def _service(rng: np.random.Generator) -> tuple[str, list[str]]:
    s = ad_texts().services[int(rng.integers(len(ad_texts().services)))]
    title = str(rng.choice(s["title"]))
    lines = [str(x) for x in rng.choice(s["lines"], size=min(len(s["lines"]), int(rng.integers(1, 4))), replace=False)]
    return title, lines


def _ink(rng: np.random.Generator, paper: tuple) -> tuple:
    dark_paper = sum(paper) < 450
    if dark_paper:
        return tuple(int(v) for v in rng.choice([(255, 255, 255), (255, 235, 60)]))
    return tuple(int(v) for v in INKS[int(rng.integers(len(INKS)))])


def render_flyer(rng: np.random.Generator) -> Ad:
    """A printed paper flyer: headline (maybe on a coloured band), body lines, a big phone number, maybe a QR."""
    w = int(rng.integers(220, 340))
    h = int(w * rng.uniform(0.62, 1.55))
    paper = PAPERS[int(rng.integers(len(PAPERS)))]
    ink = _ink(rng, paper)
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    title, lines = _service(rng)
    phone = phone_number(rng)
    m = int(w * 0.05)
    y = m
    title_h = h * rng.uniform(0.18, 0.3)
    if rng.random() < 0.45 and sum(paper) > 450:
        band = tuple(int(v) for v in rng.choice([(200, 20, 25), (20, 60, 170), (20, 20, 20), (0, 120, 60)]))
        d.rectangle([0, 0, w, int(y + title_h + m * 0.5)], fill=band)
        _text_centered(
            d, (m, y, w - m, y + title_h), title, "bold", (255, 255, 255) if rng.random() < 0.7 else (255, 230, 40)
        )
    else:
        _text_centered(d, (m, y, w - m, y + title_h), title, str(rng.choice(["bold", "serif"])), ink)
    y += title_h + m
    qr = rng.random() < 0.3
    phone_h = h * rng.uniform(0.11, 0.17)
    body_bottom = h - m - phone_h - (h * 0.07 if rng.random() < 0.6 else 0)
    body_ink = ink if rng.random() < 0.4 else (30, 30, 30) if sum(paper) > 450 else (255, 255, 255)
    line_h = min((body_bottom - y) / max(len(lines), 1) * 0.8, h * 0.09)
    for line in lines:
        if y + line_h > body_bottom:
            break
        _text_centered(d, (m, y, w - m, y + line_h), line, "regular" if rng.random() < 0.6 else "bold", body_ink)
        y += line_h * 1.22
    contact = str(rng.choice(ad_texts().contact))
    py = h - m - phone_h
    if body_bottom < py:
        _text_centered(d, (m, py - h * 0.07, w * 0.6, py - h * 0.01), contact, "regular", body_ink)
    right = w - m - (phone_h * 1.9 if qr else 0)
    _text_centered(d, (m, py, right, py + phone_h), phone, "bold", ink if rng.random() < 0.6 else (210, 20, 25))
    arr = np.asarray(img).copy()
    if qr:
        q = int(min(phone_h * 1.8, w * 0.32))
        qx, qy = w - m - q, h - m - q
        block = qr_block(rng, q)
        arr[qy : qy + q, qx : qx + q] = np.minimum(arr[qy : qy + q, qx : qx + q], block[..., None])
    if rng.random() < 0.3:
        cv2.rectangle(arr, (m // 2, m // 2), (w - m // 2, h - m // 2), ink[::-1][::-1], max(2, w // 100))
    return Ad(_opaque(arr), np.ones((h, w), np.float32), "flyer", f"{title} {phone}")


def render_strip(rng: np.random.Generator) -> Ad:
    """A narrow slip with service and number on one line, or stacked upright (poles, door frames)."""
    paper = PAPERS[int(rng.integers(len(PAPERS)))]
    ink = _ink(rng, paper)
    title, _ = _service(rng)
    phone = phone_number(rng)
    if rng.random() < 0.35:  # upright slip for poles and door frames: headline stacked, number turned 90°
        cw = int(rng.integers(48, 68))
        chars = [c for c in title if c != " "][:4]
        ch = int(cw * 0.92)
        phone_len = int(cw * rng.uniform(3.0, 3.8))
        w, h = cw, ch * len(chars) + phone_len + cw // 2
        img = Image.new("RGB", (w, h), paper)
        d = ImageDraw.Draw(img)
        for k, c in enumerate(chars):
            _text_centered(d, (3, cw // 6 + k * ch, w - 3, cw // 6 + (k + 1) * ch - 2), c, "bold", ink)
        turned = Image.new("RGB", (phone_len, w), paper)
        _text_centered(ImageDraw.Draw(turned), (2, w * 0.15, phone_len - 2, w * 0.85), phone, "bold", ink)
        img.paste(turned.rotate(90, expand=True), (0, cw // 6 + len(chars) * ch + cw // 6))
        return Ad(_opaque(np.asarray(img)), np.ones((h, w), np.float32), "strip", f"{title} {phone}")
    h = int(rng.integers(56, 90))
    two = rng.random() < 0.4
    text = f"{title} {phone}" if not two else title
    w = int(h * rng.uniform(3.2, 6.0))
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    m = h * 0.1
    if two:
        _text_centered(d, (m, m, w - m, h * 0.5), title, "bold", ink)
        _text_centered(d, (m, h * 0.52, w - m, h - m), phone, "bold", ink)
    else:
        _text_centered(d, (m, m, w - m, h - m), text, "bold", ink)
    return Ad(_opaque(np.asarray(img)), np.ones((h, w), np.float32), "strip", f"{title} {phone}")


def render_sticker(rng: np.random.Generator) -> Ad:
    """A small printed sticker: saturated colour, rounded corners, headline and number, a gloss sheen."""
    w = int(rng.integers(120, 190))
    h = int(w * rng.uniform(0.5, 1.3))
    bg = STICKERS[int(rng.integers(len(STICKERS)))]
    fg = (255, 255, 255) if sum(bg) < 500 or rng.random() < 0.3 else (20, 20, 20)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    title, _ = _service(rng)
    phone = phone_number(rng)
    m = w * 0.07
    _text_centered(d, (m, m, w - m, h * 0.55), title, "bold", fg)
    _text_centered(d, (m, h * 0.58, w - m, h - m), phone, "bold", fg if rng.random() < 0.7 else (255, 240, 60))
    arr = np.asarray(img).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    sheen = np.clip(1 - np.abs((xx / w + yy / h) - rng.uniform(0.3, 1.2)) * 6, 0, 1) * rng.uniform(0.1, 0.3)
    arr = arr + (255 - arr) * sheen[..., None]
    mask = np.zeros((h, w), np.uint8)
    r = int(min(w, h) * rng.uniform(0.05, 0.2))
    cv2.rectangle(mask, (r, 0), (w - r, h), 255, -1)
    cv2.rectangle(mask, (0, r), (w, h - r), 255, -1)
    for cx, cy in ((r, r), (w - r - 1, r), (r, h - r - 1), (w - r - 1, h - r - 1)):
        cv2.circle(mask, (cx, cy), r, 255, -1, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255
    rgba = np.dstack([arr.clip(0, 255).astype(np.uint8), mask])
    return Ad(rgba, alpha, "sticker", f"{title} {phone}")


def render_stamp(rng: np.random.Generator) -> Ad:
    """A number stamped, stencilled or sprayed straight onto the surface: ink only, no paper."""
    title, _ = _service(rng)
    phone = phone_number(rng)
    w = int(rng.integers(240, 380))
    h = int(w * rng.uniform(0.35, 0.6))
    ink = tuple(int(v) for v in rng.choice([(20, 20, 20), (190, 20, 20), (25, 40, 140)]))
    canvas = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(canvas)
    if rng.random() < 0.5:
        _text_centered(d, (4, 2, w - 4, h * 0.48), title, "bold", 255)
        _text_centered(d, (4, h * 0.52, w - 4, h - 2), phone, "bold", 255)
    else:
        _text_centered(d, (4, 4, w - 4, h - 4), f"{title}{phone}", "bold", 255)
    a = np.asarray(canvas).astype(np.float32) / 255
    if rng.random() < 0.5:  # spray: soft halo and speckle
        halo = cv2.GaussianBlur(a, (0, 0), rng.uniform(1.5, 3.5))
        a = np.maximum(a * rng.uniform(0.7, 0.95), halo * 0.6)
        a *= rng.random(a.shape) < rng.uniform(0.85, 0.98)
    else:  # stamp: uneven ink
        a *= cv2.GaussianBlur(rng.random(a.shape).astype(np.float32), (0, 0), 3) * 0.8 + 0.45
    a = np.clip(a * rng.uniform(0.65, 0.95), 0, 1)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = ink
    paper = (a > 0.15).astype(np.float32)
    return Ad(np.dstack([rgb, (a * 255).astype(np.uint8)]), paper, "stamp", f"{title} {phone}")


def _opaque(rgb: np.ndarray) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Low-frequency noise in [0, 1]."""
    h, w = shape
    small = rng.random((max(2, int(h / scale)), max(2, int(w / scale)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def wear(ad: Ad, rng: np.random.Generator) -> Ad:
    """Age a paper ad: texture, fading, dirt, folds, wrinkles, torn edges or a torn-off corner,
    scraping, tape."""
    if ad.kind == "stamp":
        return ad
    rgb = ad.rgba[..., :3].astype(np.float32)
    alpha = ad.rgba[..., 3].astype(np.float32) / 255
    paper = ad.paper.copy()
    h, w = alpha.shape
    # paper texture and uneven light
    rgb *= (1 + (rng.standard_normal((h, w)) * 0.025)[..., None]).astype(np.float32)
    rgb *= (0.9 + 0.15 * _smooth_noise(rng, (h, w), 40))[..., None]
    # sun-faded ink and yellowed paper
    if rng.random() < 0.5:
        f = rng.uniform(0.1, 0.45)
        rgb = rgb * (1 - f) + np.array([235, 228, 205], np.float32) * f
    # dirt and water stains
    if rng.random() < 0.4:
        dirt = (_smooth_noise(rng, (h, w), rng.uniform(6, 18)) > rng.uniform(0.8, 0.9)).astype(np.float32)
        dirt = cv2.GaussianBlur(dirt, (0, 0), 4) * rng.uniform(0.06, 0.22)
        rgb *= (1 - dirt)[..., None]
    # folds: a crease line with a light/dark step
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.5:
            pos = int(rng.uniform(0.3, 0.7) * h)
            rgb[pos:] *= rng.uniform(0.9, 0.97)
            rgb[max(pos - 1, 0) : pos + 1] *= 0.78
        else:
            pos = int(rng.uniform(0.3, 0.7) * w)
            rgb[:, pos:] *= rng.uniform(0.9, 0.97)
            rgb[:, max(pos - 1, 0) : pos + 1] *= 0.78
    # wrinkles: a smooth displacement with shading
    if rng.random() < 0.45:
        amp = rng.uniform(1.0, 3.5)
        dx = (_smooth_noise(rng, (h, w), 30) - 0.5) * 2 * amp
        dy = (_smooth_noise(rng, (h, w), 30) - 0.5) * 2 * amp
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        rgb = cv2.remap(rgb, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        rgb *= (1 + cv2.Sobel(dx, cv2.CV_32F, 1, 0, ksize=5) * 0.01)[..., None]
    # torn edges, or a corner torn off
    if rng.random() < 0.55:
        edge = np.ones((h, w), np.float32)
        depth = max(2, int(min(h, w) * rng.uniform(0.02, 0.06)))
        for side in range(4):
            if rng.random() < 0.5:
                continue
            n = w if side in (0, 1) else h
            walk = np.cumsum(rng.integers(-1, 2, n)).astype(np.float32)
            walk = np.clip(np.abs(walk - walk.mean()) / (np.abs(walk).max() + 1e-6) * depth, 0, depth).astype(int)
            for i, dpt in enumerate(walk):
                if side == 0:
                    edge[:dpt, i] = 0
                elif side == 1:
                    edge[h - dpt :, i] = 0
                elif side == 2:
                    edge[i, :dpt] = 0
                else:
                    edge[i, w - dpt :] = 0
        paper *= edge
    if rng.random() < 0.2:
        cut = np.ones((h, w), np.uint8)
        cx, cy = (0 if rng.random() < 0.5 else w), (0 if rng.random() < 0.5 else h)
        pts = np.array(
            [[cx, cy], [abs(cx - int(w * rng.uniform(0.2, 0.5))), cy], [cx, abs(cy - int(h * rng.uniform(0.2, 0.5)))]],
            np.int32,
        )
        cv2.fillPoly(cut, [pts], 0)
        paper *= cut
    # scraped half off: patches of paper missing, white paper fibre left at their rims
    if rng.random() < 0.12:
        field_ = _smooth_noise(rng, (h, w), rng.uniform(12, 30)) * 0.7 + _smooth_noise(rng, (h, w), 4) * 0.3
        keep = (field_ > rng.uniform(0.3, 0.45)).astype(np.float32)
        rim = cv2.dilate(keep, np.ones((3, 3), np.uint8)) - keep
        rgb = rgb * (1 - rim[..., None] * 0.8) + 235 * rim[..., None] * 0.8
        paper *= np.maximum(keep, rim * 0.9)
    alpha = alpha * paper
    rgba = np.dstack([rgb.clip(0, 255).astype(np.uint8), (alpha * 255).astype(np.uint8)])
    out = Ad(rgba, (alpha > 0.5).astype(np.float32), ad.kind, ad.text)
    if rng.random() < 0.35:
        out = _tape(out, rng)
    return out


def _tape(ad: Ad, rng: np.random.Generator) -> Ad:
    """Clear tape strips over the top corners or edge, reaching past the paper onto the wall."""
    h, w = ad.paper.shape
    pad = max(6, int(min(h, w) * 0.12))
    rgba = cv2.copyMakeBorder(ad.rgba, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0, 0))
    paper = cv2.copyMakeBorder(ad.paper, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    tw = int(min(h, w) * rng.uniform(0.12, 0.2))
    tl = int(tw * rng.uniform(2, 3.5))
    spots = [(pad, pad), (pad + w, pad)] if rng.random() < 0.6 else [(pad + w // 2, pad)]
    for x, y in spots:
        tape = np.zeros(rgba.shape[:2], np.uint8)
        angle = rng.uniform(-50, 50) + (45 if x == pad else -45 if x == pad + w else 0)
        rect = ((float(x), float(y)), (float(tl), float(tw)), float(angle))
        cv2.fillPoly(tape, [cv2.boxPoints(rect).astype(np.int32)], 255)
        t = tape.astype(np.float32) / 255 * rng.uniform(0.25, 0.45)
        colour = np.array([225, 220, 190], np.float32)
        a = rgba[..., 3:].astype(np.float32) / 255
        rgb = rgba[..., :3].astype(np.float32)
        # over paper the tape tints and adds a sheen; beyond the paper it is a faint film on the wall
        rgb = rgb * (1 - t[..., None]) + colour * t[..., None]
        a_new = np.maximum(a[..., 0], t)
        rgba = np.dstack([rgb.clip(0, 255).astype(np.uint8), (a_new * 255).astype(np.uint8)])
    return Ad(rgba, paper, ad.kind, ad.text)


RENDERERS = {"flyer": render_flyer, "strip": render_strip, "sticker": render_sticker, "stamp": render_stamp}
KIND_WEIGHTS = {"flyer": 0.42, "strip": 0.26, "sticker": 0.17, "stamp": 0.15}


def render_ad(rng: np.random.Generator, kind: str | None = None) -> Ad:
    """One worn ad of the given kind (default: drawn by :data:`KIND_WEIGHTS`)."""
    if kind is None:
        kinds = list(KIND_WEIGHTS)
        kind = str(rng.choice(kinds, p=np.array(list(KIND_WEIGHTS.values())) / sum(KIND_WEIGHTS.values())))
    return wear(RENDERERS[kind](rng), rng)


# ---------------------------------------------------------------------------------------------- paste


def _local_stats(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float, float]:
    """Mean colour, Laplacian sharpness and noise level of a region."""
    x1, y1, x2, y2 = box
    roi = image[max(y1, 0) : max(y2, y1 + 1), max(x1, 0) : max(x2, x1 + 1)]
    if roi.size == 0:
        return np.array([128.0, 128.0, 128.0]), 100.0, 2.0
    grey = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY).astype(np.float32)
    sharp = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    noise = float(np.std(grey - cv2.GaussianBlur(grey, (0, 0), 1.0)))
    return roi.reshape(-1, 3).mean(0), sharp, noise


def paste_ad(
    image: np.ndarray,
    ad: Ad,
    centre: tuple[float, float],
    width: float,
    rng: np.random.Generator,
    owner: np.ndarray | None = None,
    ad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Composite ``ad`` (as BGR) onto ``image`` in place, ``width`` pixels wide at ``centre``, warped with a
    random rotation and perspective, lit, coloured, blurred and noised like its surroundings.

    Returns the ad's paper mask in image coordinates (float, full image) and the xyxy box of the pasted
    paper, or ``None`` when it falls outside the image. ``owner`` (int map) gets ``ad_id`` where the
    paper now lies on top.
    """
    H, W = image.shape[:2]
    h, w = ad.paper.shape
    scale = width / w
    # corners of the scaled ad around the centre, rotated, then each jittered: perspective
    angle = np.deg2rad(rng.normal(0, 4) if rng.random() < 0.85 else rng.uniform(-25, 25))
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    half = np.float32([w, h]) * scale / 2
    rect = np.float32([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    rot = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = rect @ rot.T
    persp = rng.uniform(0, 0.12)
    dst += rng.uniform(-persp, persp, (4, 2)).astype(np.float32) * half.max()
    if rng.random() < 0.5:  # a receding wall: one side shorter
        side = rng.choice([0, 1])
        shrink = rng.uniform(0.0, 0.2)
        idx = [1, 2] if side else [0, 3]
        dst[idx, 1] *= 1 - shrink
    dst += np.float32(centre)
    x1, y1 = np.floor(dst.min(0)).astype(int) - 2
    x2, y2 = np.ceil(dst.max(0)).astype(int) + 2
    bx1, by1, bx2, by2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    if bx2 - bx1 < 4 or by2 - by1 < 4:
        return None
    M = cv2.getPerspectiveTransform(src, dst - np.float32([bx1, by1]))
    size = (bx2 - bx1, by2 - by1)
    rgba = ad.rgba.astype(np.float32)
    warped = cv2.warpPerspective(
        rgba,
        M,
        size,
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0, 0),
    )
    paper = cv2.warpPerspective(ad.paper, M, size, flags=cv2.INTER_LINEAR, borderValue=0)
    roi = image[by1:by2, bx1:bx2].astype(np.float32)
    mean, sharp, noise = _local_stats(image, (bx1 - size[0], by1 - size[1], bx2 + size[0], by2 + size[1]))
    ad_bgr = warped[..., 2::-1].copy()
    alpha = warped[..., 3] / 255
    # lighting and colour cast of the spot: scale by local brightness, tint toward the local colour
    lum = float(mean.mean())
    gain = np.clip((lum / 150) ** 0.8, 0.25, 1.15) * rng.uniform(0.85, 1.05)
    cast = mean / max(lum, 1)
    ad_bgr = ad_bgr * gain * (0.75 + 0.25 * cast)
    if rng.random() < 0.5:  # a light gradient across the ad
        gy, gx = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
        d = rng.normal(size=2)
        g = (gx * d[0] + gy * d[1]) / (np.hypot(*d) * max(size) + 1e-6)
        ad_bgr *= (1 + g * rng.uniform(0.1, 0.35))[..., None]
    # match blur: an ad no sharper than the wall around it; sometimes motion blur as from CCTV
    sigma = float(np.clip(1.6 - np.log10(max(sharp, 1.0)) * 0.5, 0.0, 1.6)) + rng.uniform(0, 0.6)
    if sigma > 0.3:
        ad_bgr = cv2.GaussianBlur(ad_bgr, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma * 0.8)
    if rng.random() < 0.12:
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1 / k
        rot_k = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1)
        kernel = cv2.warpAffine(kernel, rot_k, (k, k))
        kernel /= kernel.sum() + 1e-6
        ad_bgr = cv2.filter2D(ad_bgr, -1, kernel)
        alpha = cv2.filter2D(alpha, -1, kernel)
    sigma_n = float(np.clip(noise, 1.0, 6.0)) * rng.uniform(0.5, 1.0)  # sensor noise, mostly luminance
    grain = rng.normal(0, sigma_n, ad_bgr.shape[:2])[..., None] + rng.normal(0, sigma_n * 0.3, ad_bgr.shape)
    ad_bgr += grain.astype(np.float32)
    # a faint shadow under paper lifted off the wall
    if ad.kind != "stamp" and rng.random() < 0.4:
        shadow = cv2.GaussianBlur(np.roll(alpha, (2, 2), (0, 1)), (0, 0), 2) * rng.uniform(0.15, 0.35)
        roi *= (1 - shadow)[..., None]
    if ad.kind == "stamp":  # ink multiplies with the wall
        ink = ad_bgr / 255
        out = roi * (1 - alpha[..., None]) + roi * ink * alpha[..., None]
    else:
        out = roi * (1 - alpha[..., None]) + ad_bgr * alpha[..., None]
    image[by1:by2, bx1:bx2] = out.clip(0, 255).astype(np.uint8)
    full = np.zeros((H, W), np.float32)
    full[by1:by2, bx1:bx2] = paper
    if owner is not None:
        owner[full > 0.5] = ad_id
    ys, xs = np.nonzero(full > 0.5)
    if not len(xs):
        return None
    return full, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


# ----------------------------------------------------------------------------------------- placement


@dataclass
class Surface:
    """Where ads may go: an xyxy region and what it is."""

    box: np.ndarray
    kind: str  # door | window | bin | wall


def surfaces(
    sample: Sample, image: np.ndarray, rng: np.random.Generator, avoid: np.ndarray | None = None, n_wall: int = 12
) -> list[Surface]:
    """Doors, windows and arches (facade context boxes), bins (own labels), and wall patches: random regions
    away from the sky, the ground, the labelled objects and ``avoid`` (xyxy, e.g. people and cars), with
    moderate texture."""
    H, W = image.shape[:2]
    out: list[Surface] = []
    for name, row in sample.context:
        kind = CONTEXT_SURFACES.get(name)
        if kind:
            out.append(Surface(xywhn_to_xyxy(row[None], W, H)[0], kind))
    own = xywhn_to_xyxy(sample.boxes, W, H)
    for row, box in zip(sample.boxes, own, strict=True):
        if int(row[0]) in SURFACE_CLASSES:
            out.append(Surface(box, "bin"))
    if avoid is not None and len(avoid):
        own = np.concatenate([own, np.asarray(avoid, np.float32).reshape(-1, 4)])
    grey = cv2.cvtColor(cv2.resize(image, (W // 4 or 1, H // 4 or 1), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
    hsv = cv2.cvtColor(cv2.resize(image, (W // 4 or 1, H // 4 or 1), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2HSV)
    lap = np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F))
    # walls stand above the ground: in a head-on facade photo they fill the frame down to the pavement;
    # in a street photo taken at eye level the lower half is mostly pavement, road or grass
    facade = any(kind in ("door", "window") for kind in (CONTEXT_SURFACES.get(n) for n, _ in sample.context))
    low = 0.8 if facade else 0.55
    green = (hsv[..., 0] > 30) & (hsv[..., 0] < 90) & (hsv[..., 1] > 50)
    for _ in range(n_wall * 4):
        if sum(s.kind == "wall" for s in out) >= n_wall:
            break
        s = rng.uniform(0.08, 0.3) * min(W, H)
        x, y = rng.uniform(0, W - s), rng.uniform(H * 0.06, max(H * low - s / 2, H * 0.06 + 1))
        box = np.array([x, y, x + s, y + s], np.float32)
        if len(own) and box_ios(box[None], own).max() > 0.3:
            continue
        q = (box / 4).astype(int)
        patch_h = hsv[q[1] : q[3] + 1, q[0] : q[2] + 1]
        tex = float(lap[q[1] : q[3] + 1, q[0] : q[2] + 1].mean())
        sky = float(((patch_h[..., 2] > 190) & (patch_h[..., 1] < 60)).mean()) if patch_h.size else 1.0
        leaves = float(green[q[1] : q[3] + 1, q[0] : q[2] + 1].mean()) if patch_h.size else 1.0
        if sky > 0.4 or leaves > 0.3 or tex > 30:  # sky, grass and foliage, clutter
            continue
        out.append(Surface(box, "wall"))
    return out


@dataclass
class SynthResult:
    """A synthetic image and its labels (background labels + small_ad boxes)."""

    image: np.ndarray
    boxes: np.ndarray
    ads: list[dict] = field(default_factory=list)


def synthesize(
    background: Sample, image: np.ndarray, rng: np.random.Generator, max_ads: int = 5, avoid: np.ndarray | None = None
) -> SynthResult:
    """Paste one to ``max_ads`` ads (sometimes a cluster) onto plausible surfaces of ``image`` (BGR), covering
    no labelled object (bins only partly) and none of the ``avoid`` boxes (xyxy: people, vehicles)."""
    image = image.copy()
    H, W = image.shape[:2]
    keep = background.boxes.copy()
    avoid = np.zeros((0, 4), np.float32) if avoid is None else np.asarray(avoid, np.float32).reshape(-1, 4)
    protected = np.concatenate([xywhn_to_xyxy(keep, W, H), avoid])
    is_surface = np.concatenate([np.isin(keep[:, 0].astype(int), list(SURFACE_CLASSES)), np.zeros(len(avoid), bool)])
    places = surfaces(background, image, rng, avoid)
    if not places:
        places = [Surface(np.array([0, H * 0.1, W, H], np.float32), "wall")]
    n = int(rng.integers(1, max_ads + 1)) if rng.random() < 0.5 else int(rng.integers(1, 3))
    cluster = rng.random() < 0.3
    owner = np.zeros((H, W), np.int16)
    areas: dict[int, float] = {}
    boxes: dict[int, np.ndarray] = {}
    meta: list[dict] = []
    anchor = None
    short = min(W, H)
    for k in range(1, n + 1):
        for _attempt in range(8):
            ad = render_ad(rng)
            if ad.kind == "stamp" and not any(p.kind in ("wall", "door", "bin") for p in places):
                continue
            if cluster and anchor is not None:
                surf, (cx, cy) = anchor[0], anchor[1] + rng.normal(0, 1, 2) * anchor[2] * 0.7
                width = anchor[2] * rng.uniform(0.7, 1.3)
            else:
                weights = np.array([{"door": 3, "window": 2, "bin": 4, "wall": 1.5}[s.kind] for s in places])
                if ad.kind == "stamp":  # ink goes on walls, doors and bins, not on glass
                    weights = weights * np.array([s.kind != "window" for s in places])
                surf = places[int(rng.choice(len(places), p=weights / weights.sum()))]
                sx1, sy1, sx2, sy2 = surf.box
                sw, sh = sx2 - sx1, sy2 - sy1
                # size as the side of a square of the ad's area, so long slips are not giant
                if surf.kind == "wall":
                    side = short * float(np.exp(rng.uniform(np.log(0.05), np.log(0.22))))
                else:
                    side = sw * rng.uniform(0.18, 0.5)
                width = side / np.sqrt(ad.paper.shape[0] / ad.paper.shape[1])
                # on a bin: its body, below the lid and whatever overflows it
                top, bottom = (0.4, 0.85) if surf.kind == "bin" else (0.1, 0.85)
                cx = rng.uniform(sx1 + sw * 0.15, sx2 - sw * 0.15)
                cy = rng.uniform(sy1 + sh * top, sy1 + sh * bottom)
            width = float(np.clip(width, MIN_AD_PIXELS * 1.4, W * 0.45))
            aspect = ad.paper.shape[0] / ad.paper.shape[1]
            if width * aspect > H * 0.6:
                width = H * 0.6 / aspect
            est = np.array(
                [cx - width / 2, cy - width * aspect / 2, cx + width / 2, cy + width * aspect / 2], np.float32
            )
            if len(protected):
                share = _covered_share(est, protected)
                if (share[~is_surface] > 0.25).any() or (share[is_surface] > 0.5).any():
                    continue
            trial = image.copy()
            trial_owner = owner.copy()
            res = paste_ad(trial, ad, (float(cx), float(cy)), width, rng, trial_owner, k)
            if res is None:
                continue
            mask, box = res
            bw, bh = box[2] - box[0], box[3] - box[1]
            if min(bw, bh) < MIN_AD_PIXELS:
                continue
            # earlier ads must stay mostly visible
            ok = all((trial_owner == j).sum() >= 0.55 * areas[j] for j in areas)
            if not ok:
                continue
            image, owner = trial, trial_owner
            areas[k] = float((mask > 0.5).sum())
            boxes[k] = box
            meta.append({"kind": ad.kind, "text": ad.text, "surface": surf.kind, "width": round(float(width), 1)})
            if cluster and anchor is None:
                anchor = (surf, np.array([cx, cy]), width)
            break
    # boxes from what stays visible of each ad
    ad_rows = []
    for j in boxes:
        ys, xs = np.nonzero(owner == j)
        if len(xs) < MIN_AD_PIXELS**2 / 2:
            continue
        ad_rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    ad_boxes = xyxy_to_xywhn(np.array(ad_rows, np.float32).reshape(-1, 4), np.full(len(ad_rows), SMALL_AD), W, H)
    return SynthResult(image, np.concatenate([keep, ad_boxes]).astype(np.float32), meta)


def _covered_share(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Share of each of ``others``' area that ``box`` covers."""
    lt = np.maximum(box[None, :2], others[:, :2])
    rb = np.minimum(box[None, 2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(np.clip(others[:, 2:] - others[:, :2], 1e-6, None), axis=1)
    return inter / area


# ------------------------------------------------------------------------------------------ generation


def generate(
    backgrounds: Sequence[Sample],
    n: int,
    out_dir: Path,
    source: str = "synth-ads",
    seed: int = 0,
    split: str = "train",
    quality: tuple[int, int] = (78, 93),
    workers: int = 2,
    desc: str | None = None,
    avoid: Mapping[str, np.ndarray] | None = None,
) -> list[Sample]:
    """Write ``n`` synthetic images (``out_dir/images``, ``out_dir/labels``, product class ids) on backgrounds
    drawn in turn from a seeded shuffle; returns their samples (split set, ``labelled`` = background's +
    small_ad). Image ``i`` depends only on ``(seed, split, i)`` and its background. ``avoid`` gives, per
    background key, xyxy boxes no ad may cover (the teacher's people and vehicles).
    """
    usable = [b for b in backgrounds if b.readable]
    if not usable or n <= 0:
        return []
    order = np.random.default_rng([seed, 7]).permutation(len(usable))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    split_code = {"train": 0, "val": 1}.get(split, 2)

    def one(i: int) -> Sample | None:
        bg = usable[int(order[i % len(order)])]
        rng = np.random.default_rng([seed, split_code, i])
        try:
            image = read_image(bg.image)
        except ImageReadError:
            return None
        result = synthesize(bg, image, rng, avoid=(avoid or {}).get(bg.key))
        stem = f"{split}-{i:05d}-{bg.source}-{safe_stem(bg.image)}"
        path = out_dir / "images" / f"{stem}.jpg"
        write_image(path, result.image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*quality))])
        write_label_file(out_dir / "labels" / f"{stem}.txt", result.boxes)
        s = Sample(
            source,
            path,
            split,
            result.boxes,
            labelled=bg.labelled | {SMALL_AD},
            width=image.shape[1],
            height=image.shape[0],
        )
        s.note = f"background {bg.key}"
        return s

    with ThreadPoolExecutor(max_workers=workers) as pool:
        bar = tqdm(
            pool.map(one, range(n)),
            total=n,
            desc=desc or f"synthesize ads ({split})",
            unit="img",
            file=sys.stderr,
            disable=n < 20 or None,
        )
        return [s for s in bar if s is not None]
