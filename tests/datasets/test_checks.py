import shutil
from pathlib import Path

import cv2
import numpy as np

from datasets.checks import CheckReport, check_box_sizes, find_duplicates, scan_samples
from datasets.dedup import group_pairs, hamming, near_duplicate_pairs, phash, phash_pair
from datasets.samples import Issue, Sample
from datasets.sources import SourceSpec, load_source


def test_phash_ignores_reencoding_and_brightness_but_separates_different_photos(sample_photos):
    a = cv2.imread(str(sample_photos[0]))
    again = cv2.imdecode(
        cv2.imencode(".jpg", cv2.resize(a, None, fx=0.5, fy=0.5), [cv2.IMWRITE_JPEG_QUALITY, 40])[1], 1
    )
    brighter = cv2.convertScaleAbs(a, alpha=1.1, beta=15)
    assert hamming(phash(a), phash(again)) <= 6
    assert hamming(phash(a), phash(brighter)) <= 6
    others = [hamming(phash(a), phash(cv2.imread(str(p)))) for p in sample_photos[1:]]
    assert min(others) >= 12
    # a mirrored copy is caught through the mirrored hash
    mirrored = np.stack([phash_pair(a), phash_pair(a[:, ::-1].copy())])
    assert near_duplicate_pairs(mirrored, 8) == [(0, 1, 0)]


def test_union_find_groups_chains():
    assert group_pairs(5, [(0, 3, 1), (3, 4, 1)]) == [[0, 3, 4], [1], [2]]


def test_every_check_on_a_broken_source(tmp_path: Path, garbage_like: Path, sample_photos):
    imgs, labels = garbage_like / "train" / "images", garbage_like / "train" / "labels"
    # corrupt images: truncated JPEG, empty file, text named .jpg
    data = (imgs / "train000.jpg").read_bytes()
    (imgs / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (imgs / "empty.jpg").write_bytes(b"")
    (imgs / "text.jpg").write_text("not an image")
    # bad label lines and a degenerate (sub-pixel) box
    (labels / "train001.txt").write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    (labels / "train002.txt").write_text("1 0.5 0.5 0.002 0.3\n2 0.3 0.3 0.2 0.2\n")
    # an exact copy (train) of a val image, a re-encoded near-duplicate, and a rotated copy
    val0 = garbage_like / "val" / "images" / "val000.jpg"
    shutil.copyfile(val0, imgs / "copy_of_val0.jpg")
    shutil.copyfile(garbage_like / "val" / "labels" / "val000.txt", labels / "copy_of_val0.txt")
    photo = cv2.resize(cv2.imread(str(sample_photos[1])), (320, 240))
    cv2.imwrite(str(imgs / "photo.jpg"), photo)
    cv2.imwrite(str(imgs / "photo_small.jpg"), cv2.resize(photo, (200, 150)), [cv2.IMWRITE_JPEG_QUALITY, 50])
    rot = cv2.warpAffine(photo, cv2.getRotationMatrix2D((160, 120), 12, 1.1), (320, 240))
    cv2.imwrite(str(imgs / "photo_rotated.jpg"), rot)

    data = load_source(SourceSpec(name="g", path=str(garbage_like), mapping="garbage"))
    by = {s.image.stem: s for s in data.samples}
    features, issues = scan_samples(data.samples)
    issues += check_box_sizes(data.samples)
    bad = {Path(i.file).stem for i in issues if i.kind == "corrupt_image"}
    assert bad == {"trunc", "empty", "text"}
    assert not by["trunc"].readable and by["train000"].readable and by["train000"].width == 200
    kinds = {(i.kind, Path(i.file).stem) for i in data.issues + issues}
    assert {("unknown_class", "train001"), ("out_of_range", "train001"), ("wrong_arity", "train001")} <= kinds
    assert ("degenerate_box", "train002") in kinds
    assert len(by["train001"].boxes) == 1 and len(by["train002"].boxes) == 1  # the valid lines stay

    pairs = find_duplicates(data.samples, features)
    found = {(data.samples[p.a].image.stem, data.samples[p.b].image.stem): p.kind for p in pairs}
    found = {tuple(sorted(k)): v for k, v in found.items()}
    assert found[("copy_of_val0", "val000")] == "exact"
    assert found[("photo", "photo_small")] == "near"
    assert found[("photo", "photo_rotated")] == "scene"
    # nothing else: the generated images are all different
    assert set(found) == {
        ("copy_of_val0", "val000"),
        ("photo", "photo_small"),
        ("photo", "photo_rotated"),
        ("photo_rotated", "photo_small"),
    }

    report = CheckReport("check", data.samples, data.issues + issues, pairs)
    assert len(report.leaks()) == 1  # the copy of a val image sits in train
    text = report.to_text()
    assert "corrupt_image" in text and "train/val leaks: 1" in text
    row = next(r for r in report.table() if r["split"] == "train")
    assert row["images"] == 10 and row["classes"]["litter"] > 0
    files = report.write(tmp_path / "report")
    assert {"md", "html", "json", "box_sizes", "duplicates"} <= set(files)
    md = files["md"].read_text()
    assert "box_sizes.png" in md and "trunc.jpg" in md and "| g | train |" in md
    assert "<table>" in files["html"].read_text()
    png = cv2.imread(str(files["box_sizes"]))
    assert png is not None and png.shape[1] > 600


def test_boxes_too_small_in_pixels_are_dropped():
    s = Sample("x", Path("x.jpg"), boxes=np.array([[3, 0.5, 0.5, 0.001, 0.5], [3, 0.5, 0.5, 0.2, 0.2]], np.float32))
    s.width, s.height = 640, 480
    issues = check_box_sizes([s])
    assert len(s.boxes) == 1 and issues[0].kind == "degenerate_box" and "0.6x240.0 px" in issues[0].message


def test_the_image_count_says_how_many_unreadable_images_were_left_out():
    kept = [Sample("x", Path(f"{i}.jpg"), "train") for i in range(3)]
    kept[0].readable = False  # `data check` keeps an unreadable image in its list
    corrupt = [Issue("error", "corrupt_image", f"{i}.jpg", "unreadable image: truncated") for i in (0, 7, 8)]
    text = CheckReport("t", kept, corrupt).to_text()
    assert "images: 3 (1 unreadable; 2 unreadable, not imported)" in text
    text = CheckReport("t", kept[1:], corrupt[1:]).to_text()  # a build drops them before the report
    assert "images: 2 (2 unreadable, not imported)" in text
    assert "images: 2 (0 unreadable)" in CheckReport("t", kept[1:]).to_text()
