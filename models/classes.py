"""The product's classes: the one list every module uses.

Detector classes are what a model outputs (in this order, ids are positions); violation types are
what a city bureau files a case for. ``VIOLATIONS[v].sources`` says which detector classes feed a
violation. Nothing else in the code base may spell out these lists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorClass:
    """One class the detector outputs."""

    name: str
    zh: str
    description: str


@dataclass(frozen=True)
class ViolationType:
    """One kind of violation a case is filed for, and the detector classes that evidence it."""

    name: str
    zh: str
    sources: tuple[str, ...]
    description: str


DETECTOR_CLASSES: tuple[DetectorClass, ...] = (
    DetectorClass("street_vending", "占道经营/流动摊贩", "vending stalls, carts, goods laid out on the street"),
    DetectorClass("small_ad", "小广告", "flyers, stickers, posters pasted on walls, poles, windows"),
    DetectorClass("shop_sign", "店招/户外广告", "shop signboards and projecting signs"),
    DetectorClass("litter", "暴露垃圾", "exposed garbage, dumped bags, bulky waste, scattered trash"),
    DetectorClass("garbage_bin", "垃圾桶", "a garbage bin or street container in normal state"),
    DetectorClass("overflowing_bin", "垃圾满溢", "a garbage bin overflowing with waste"),
    DetectorClass("person", "行人", "a person"),
    DetectorClass("car", "汽车", "cars, vans, buses and trucks"),
    DetectorClass("motorbike", "摩托车/电动车", "motorcycles, e-bikes and scooters"),
    DetectorClass("bicycle", "自行车", "bicycles"),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in DETECTOR_CLASSES)
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

VEHICLE_CLASSES: tuple[str, ...] = ("car", "motorbike", "bicycle")

VIOLATIONS: dict[str, ViolationType] = {
    v.name: v
    for v in (
        ViolationType("street_vending", "占道经营", ("street_vending",), "vending in a no-vending zone"),
        ViolationType("illegal_parking", "乱停乱放", VEHICLE_CLASSES, "a vehicle parked where it must not be"),
        ViolationType("small_ad", "小广告", ("small_ad",), "illegal flyers, stickers or posters"),
        ViolationType("exposed_garbage", "暴露垃圾", ("litter",), "garbage left exposed in public space"),
        ViolationType("overflowing_bin", "垃圾满溢", ("overflowing_bin",), "a garbage bin overflowing"),
    )
}
VIOLATION_TYPES: tuple[str, ...] = tuple(VIOLATIONS)


def class_id(name: str) -> int:
    """Id of a detector class by name; a clear error for an unknown name."""
    try:
        return CLASS_IDS[name]
    except KeyError:
        raise ValueError(f"unknown detector class {name!r}; known: {', '.join(CLASS_NAMES)}") from None


def violation_for_class(name: str) -> str | None:
    """The violation type a detector class evidences without zones (parking needs zones, so: none)."""
    for v in VIOLATIONS.values():
        if v.name != "illegal_parking" and name in v.sources:
            return v.name
    return None
