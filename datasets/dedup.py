"""Duplicate and near-duplicate images: perceptual hash (pHash), same-scene matching, union-find groups.

Two stages, both plain OpenCV/numpy:

* **pHash**: the sign pattern of the 8x8 lowest DCT frequencies of a 32x32 grey thumbnail against their
  median (64 bits). Robust to resizing, re-encoding, brightness and colour changes and mild blur; a
  mirrored copy is caught by also hashing the flipped image. Pairs within :data:`NEAR_DUPLICATE_BITS`.
* **same scene**: pHash misses copies that were rotated, sheared or cropped (Roboflow exports hold such
  augmented twins) and other shots of the same spot. Each image gets ORB features; a bag of visual words
  retrieves a few candidates per image and a RANSAC affine fit over ORB matches verifies them
  (:data:`SCENE_MIN_INLIERS`). On the garbage set, pairs with 20+ inliers were all the same scene and
  pairs of different scenes stayed under 16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

#: Hamming distance (of 64 bits) at or below which two images count as near-duplicates.
NEAR_DUPLICATE_BITS = 8

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def phash(image: np.ndarray) -> np.ndarray:
    """64-bit perceptual hash of a BGR or grey image as 8 bytes."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    return np.packbits((low > np.median(low)).reshape(-1))


def phash_pair(image: np.ndarray) -> np.ndarray:
    """``(2, 8)``: the hash of the image and of its mirror image."""
    return np.stack([phash(image), phash(image[:, ::-1])])


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Bits that differ between two 8-byte hashes."""
    return int(_POPCOUNT[np.bitwise_xor(a, b)].sum())


def near_duplicate_pairs(
    hashes: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS, chunk: int = 256
) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)`` with ``i < j`` whose hashes differ in at most ``max_bits`` bits.

    ``hashes`` is ``(N, 8)`` (plain) or ``(N, 2, 8)`` (plain + mirrored, from :func:`phash_pair`); with
    mirrored hashes a pair's distance is the smaller of straight and mirrored.
    """
    h = np.asarray(hashes, np.uint8)
    plain = h[:, 0] if h.ndim == 3 else h
    mirror = h[:, 1] if h.ndim == 3 else None
    n = len(plain)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, n, chunk):
        block = plain[start : start + chunk]
        dist = _POPCOUNT[np.bitwise_xor(block[:, None, :], plain[None, :, :])].sum(-1, dtype=np.int32)
        if mirror is not None:
            dm = _POPCOUNT[np.bitwise_xor(block[:, None, :], mirror[None, :, :])].sum(-1, dtype=np.int32)
            dist = np.minimum(dist, dm)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                pairs.append((i, c, int(dist[r, c])))
    return pairs


#: ORB matches consistent with one affine map at or above which two images show the same scene.
SCENE_MIN_INLIERS = 20
#: Long side of the grey image ORB features are computed on.
ORB_SIDE = 320


@dataclass
class SceneFeatures:
    """ORB keypoints (``(K, 2)`` float32) and descriptors (``(K, 32)`` uint8) of one image."""

    points: np.ndarray
    descriptors: np.ndarray


def scene_features(image: np.ndarray, n_features: int = 400) -> SceneFeatures:
    """ORB features of an image resized to :data:`ORB_SIDE` on its long side."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    scale = ORB_SIDE / max(grey.shape[:2])
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    kp, desc = cv2.ORB_create(n_features).detectAndCompute(grey, None)
    if desc is None:
        return SceneFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    return SceneFeatures(np.float32([k.pt for k in kp]), desc)


def _vocabulary(features: list[SceneFeatures], words: int, seed: int) -> np.ndarray | None:
    """Binary visual words (``(W, 32)`` uint8) by k-means over a sample of the descriptors."""
    all_desc = [f.descriptors for f in features if len(f.descriptors)]
    if not all_desc:
        return None
    desc = np.concatenate(all_desc)
    rng = np.random.default_rng(seed)
    if len(desc) > 30_000:
        desc = desc[rng.choice(len(desc), 30_000, replace=False)]
    words = min(words, max(len(desc) // 20, 2))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 15, 0.5)
    bits = np.unpackbits(desc, axis=1).astype(np.float32)
    _, _, centres = cv2.kmeans(bits, words, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    return np.packbits(centres > 0.5, axis=1)


def _bow_vectors(features: list[SceneFeatures], vocab: np.ndarray) -> np.ndarray:
    """TF-IDF weighted, L2-normalised bag-of-words vectors, one row per image."""
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    vectors = np.zeros((len(features), len(vocab)), np.float32)
    for i, f in enumerate(features):
        if len(f.descriptors):
            np.add.at(vectors[i], [m.trainIdx for m in matcher.match(f.descriptors, vocab)], 1)
    idf = np.log(len(features) / (1.0 + (vectors > 0).sum(0)))
    vectors *= idf
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9
    return vectors


def affine_inliers(a: SceneFeatures, b: SceneFeatures, matcher: cv2.BFMatcher | None = None) -> int:
    """ORB matches (ratio test) of two images consistent with one affine map (RANSAC, 4 px)."""
    if len(a.descriptors) < 8 or len(b.descriptors) < 8:
        return 0
    matcher = matcher or cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [
        m[0]
        for m in matcher.knnMatch(a.descriptors, b.descriptors, k=2)
        if len(m) == 2 and m[0].distance < 0.75 * m[1].distance
    ]
    if len(good) < 8:
        return 0
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    _, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0)
    return int(inliers.sum()) if inliers is not None else 0


def same_scene_pairs(
    features: list[SceneFeatures],
    candidates: int = 10,
    min_inliers: int = SCENE_MIN_INLIERS,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, inliers)`` (``i < j``) showing the same scene: bag-of-words retrieval of ``candidates``
    neighbours per image, then geometric verification. ``progress`` is called with the number of images done.
    """
    n = len(features)
    if n < 2:
        return []
    vocab = _vocabulary(features, 256, seed)
    if vocab is None:
        return []
    vectors = _bow_vectors(features, vocab)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    checked: set[tuple[int, int]] = set()
    pairs = []
    k = min(candidates, n - 1)
    for start in range(0, n, 256):
        sim = vectors[start : start + 256] @ vectors.T
        for r in range(len(sim)):
            i = start + r
            sim[r, i] = -1
            for j in np.argpartition(-sim[r], k - 1)[:k].tolist():
                pair = (min(i, j), max(i, j))
                if pair in checked or sim[r, j] <= 0:
                    continue
                checked.add(pair)
                inl = affine_inliers(features[pair[0]], features[pair[1]], matcher)
                if inl >= min_inliers:
                    pairs.append((*pair, inl))
            if progress:
                progress(1)
    return sorted(pairs)


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        """Representative of ``i``'s set."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        """Merge the sets of ``a`` and ``b``; returns the new representative."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

    def groups(self) -> list[list[int]]:
        """All sets, each sorted, ordered by their smallest member."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return sorted(out.values(), key=lambda g: g[0])


def group_pairs(n: int, pairs: Iterable[tuple[int, int, int]]) -> list[list[int]]:
    """Connected components of ``n`` items under the given pairs (singletons included)."""
    uf = UnionFind(n)
    for i, j, _ in pairs:
        uf.union(i, j)
    return uf.groups()
