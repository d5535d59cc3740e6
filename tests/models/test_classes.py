from models.classes import CLASS_NAMES, VIOLATION_TYPES, VIOLATIONS, class_id, violation_for_class


def test_detector_classes_in_product_order():
    assert CLASS_NAMES == (
        "street_vending",
        "small_ad",
        "shop_sign",
        "litter",
        "garbage_bin",
        "overflowing_bin",
        "person",
        "car",
        "motorbike",
        "bicycle",
    )
    assert class_id("litter") == 3


def test_every_violation_is_fed_by_known_classes_and_has_chinese_name():
    assert VIOLATION_TYPES == ("street_vending", "illegal_parking", "small_ad", "exposed_garbage", "overflowing_bin")
    for v in VIOLATIONS.values():
        assert v.zh and all(s in CLASS_NAMES for s in v.sources)
    assert VIOLATIONS["illegal_parking"].zh == "乱停乱放"
    assert set(VIOLATIONS["illegal_parking"].sources) == {"car", "motorbike", "bicycle"}


def test_violation_for_class_never_infers_parking():
    assert violation_for_class("litter") == "exposed_garbage"
    assert violation_for_class("overflowing_bin") == "overflowing_bin"
    assert violation_for_class("car") is None
    assert violation_for_class("shop_sign") is None


def test_unknown_class_name_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="unknown detector class 'dog'"):
        class_id("dog")
