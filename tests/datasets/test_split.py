from pathlib import Path

from datasets.checks import DuplicatePair
from datasets.samples import Sample
from datasets.split import assign_splits, held_out


def samples(source: str, n: int, split: str | None = None) -> list[Sample]:
    return [Sample(source, Path(f"{source}/{i:03d}.jpg"), split) for i in range(n)]


def test_held_out_is_deterministic_and_near_the_fraction():
    keys = [f"s/{i}" for i in range(2000)]
    picked = [k for k in keys if held_out(k, 0.15, seed=0)]
    assert picked == [k for k in keys if held_out(k, 0.15, seed=0)]
    assert 0.12 < len(picked) / len(keys) < 0.18
    assert picked != [k for k in keys if held_out(k, 0.15, seed=1)]


def test_near_duplicate_groups_never_straddle_train_and_val():
    items = samples("facades", 300)
    # chains of near-duplicates: (0,1,2), (10,11), ... every 10th image starts a group of 2-3
    pairs = []
    for start in range(0, 300, 10):
        pairs += [DuplicatePair(start, start + 1, "near", 4), DuplicatePair(start + 1, start + 2, "scene", 30)]
    kept, dropped = assign_splits(items, pairs, {"facades": 0.3}, seed=0)
    assert not dropped and len(kept) == 300
    for p in pairs:
        assert items[p.a].split == items[p.b].split
    assert {s.split for s in items} == {"train", "val"}
    assert 40 < sum(s.split == "val" for s in items) < 140


def test_given_val_is_kept_and_train_duplicates_are_dropped_or_moved():
    def setup():
        train, val = samples("garbage", 4, "train"), samples("g2", 2, "val")
        items = train + val
        # train 0 duplicates val 0 (through train 1: a chain); train 3 is unrelated
        pairs = [DuplicatePair(0, 1, "scene", 25), DuplicatePair(1, 4, "near", 2)]
        return items, pairs

    items, pairs = setup()
    kept, dropped = assign_splits(items, pairs, {}, leak_policy="drop")
    assert [s.key for s, _ in dropped] == ["garbage/000", "garbage/001"]
    assert "val image g2/000" in dropped[0][1]
    assert {s.key: s.split for s in kept} == {
        "garbage/002": "train",
        "garbage/003": "train",
        "g2/000": "val",
        "g2/001": "val",
    }
    items, pairs = setup()
    kept, dropped = assign_splits(items, pairs, {}, leak_policy="move")
    assert not dropped and [s.split for s in kept] == ["val", "val", "train", "train", "val", "val"]


def test_unsplit_images_join_the_given_split_of_their_group():
    items = samples("garbage", 2, "train") + samples("facades", 2)
    assign_splits(items, [DuplicatePair(0, 2, "near", 4)], {"facades": 0.99})
    assert items[2].split == "train"  # would be val by its fraction, but its duplicate is given as train
    assert items[3].split == "val"


def test_held_out_split_gives_a_rare_class_its_share():
    import numpy as np

    items = samples("facades", 200)
    for i, s in enumerate(items):  # every image has shop signs; one in ten also a window ad (class 1)
        s.boxes = np.array([[2, 0.5, 0.5, 0.1, 0.1]] + ([[1, 0.3, 0.3, 0.1, 0.1]] if i % 10 == 0 else []), np.float32)
    assign_splits(items, [], {"facades": 0.15})
    rare = [s for s in items if 1 in s.boxes[:, 0]]
    assert sum(s.split == "val" for s in rare) == 3  # 15 % of 20
    assert sum(s.split == "val" for s in items) == 30
