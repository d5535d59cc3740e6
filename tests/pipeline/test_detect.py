import numpy as np
import pytest

from models.classes import CLASS_IDS
from models.registry import ModelError, resolve
from pipeline.decode import read_image
from pipeline.detect import Detector, DetectorConfig, letterbox, make_tiles, merge_tiles, nms, rect_shape
from pipeline.detections import Detections, box_iou


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


@pytest.fixture(scope="module")
def ultralytics_model():
    from training import ultra

    return ultra.yolo(resolve("default").file("pt"))


@pytest.mark.parametrize("hw", [(1024, 768), (597, 800), (640, 640), (100, 3000), (33, 47)])
def test_letterbox_matches_ultralytics(hw):
    from training import ultra

    ultra.setup()
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
    shape = rect_shape(hw, 640)
    ours, _, _ = letterbox(image, shape)
    theirs = LetterBox(640, auto=True, stride=32)(image=image)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


def test_nms_matches_torchvision():
    import torch
    import torchvision

    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 500, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 120, (400, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    classes = rng.integers(0, 3, 400)
    ours = nms(boxes, scores, 0.5, classes)
    theirs = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5
    ).numpy()
    assert sorted(ours.tolist()) == sorted(theirs.tolist())
    assert scores[ours].tolist() == sorted(scores[ours].tolist(), reverse=True)


def test_matches_ultralytics_predict_on_the_same_model(detector, ultralytics_model, sample_photos):
    """Same model, same photos: every box matches ultralytics' (IoU >= 0.99, score within 0.01)."""
    card = detector.ref.card
    kept = [i for i, c in enumerate(card.class_map) if c is not None]
    total = 0
    for path in sample_photos:
        ours = detector.detect(read_image(path))
        res = ultralytics_model.predict(str(path), conf=0.25, iou=0.7, classes=kept, verbose=False)[0]
        theirs_xyxy = res.boxes.xyxy.numpy()
        theirs_cls = [CLASS_IDS[card.class_map[int(c)]] for c in res.boxes.cls]
        theirs_conf = res.boxes.conf.numpy()
        assert len(ours) <= len(theirs_xyxy)  # merged vehicle classes can only merge boxes
        for i in range(len(ours)):
            iou = box_iou(ours.xyxy[i], theirs_xyxy)[0]
            j = int(iou.argmax())
            assert iou[j] >= 0.99, f"{path.name}: box {ours.xyxy[i]} has no ultralytics twin"
            assert abs(ours.confidence[i] - theirs_conf[j]) <= 0.01
            assert ours.class_id[i] == theirs_cls[j]
        total += len(ours)
    assert total >= 20  # the sample photos show people, cars, bikes and motorbikes


def test_batch_equals_one_by_one(detector, sample_photos):
    images = [read_image(p) for p in sample_photos[:4]]
    same_size = [images[0], images[0][:, ::-1].copy()]
    for group in (images, same_size):
        batched = detector.detect_batch(group)
        for image, dets in zip(group, batched, strict=True):
            single = detector.detect(image)
            if len(group) == len(same_size) and group is same_size:  # same shape: identical letterbox
                assert np.allclose(single.xyxy, dets.xyxy, atol=0.5)
            else:  # different shapes are padded to a common size: boxes still agree closely
                iou = box_iou(single.xyxy, dets.xyxy)
                strong = single.confidence > 0.5
                assert (iou.max(1)[strong] > 0.9).all() if len(dets) else not strong.any()


def test_thresholds_and_class_filter(sample_photos):
    image = read_image(next(p for p in sample_photos if "scooter" in p.name))
    base = Detector(conf=0.25).detect(image)
    assert {"person", "motorbike"} <= set(base.class_names)
    only = Detector(classes=["person"]).detect(image)
    assert set(only.class_names) == {"person"} and len(only) == base.class_names.count("person")
    strict = Detector(class_conf={"person": 0.99}).detect(image)
    assert "person" not in strict.class_names
    assert strict.class_names.count("motorbike") == base.class_names.count("motorbike")
    low = Detector(conf=0.05).detect(image)
    assert len(low) > len(base) and (low.confidence > 0.05).all()


def test_a_path_to_the_int8_file_runs_the_int8_model(detector, sample_photos):
    folder = resolve("default").folder
    int8 = Detector(model=str(folder / "model.int8.onnx"))  # the file decides, not the default variant fp32
    assert int8.model_path == folder / "model.int8.onnx" and int8.version.endswith("/int8")
    assert int8.version == Detector(variant="int8").version != detector.version
    image = read_image(sample_photos[0])
    np.testing.assert_allclose(int8.detect(image).confidence, Detector(variant="int8").detect(image).confidence)
    with pytest.raises(ModelError, match="runs the ONNX files"):
        Detector(model=str(folder / "model.pt"))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        DetectorConfig(class_conf={"dog": 0.5})
    with pytest.raises(ValueError, match="extra"):
        DetectorConfig(confidence=0.5)
    with pytest.raises(ModelError, match="not installed"):
        Detector(provider="openvino") if "OpenVINOExecutionProvider" not in __import__(
            "onnxruntime"
        ).get_available_providers() else pytest.skip("OpenVINO installed")


def test_tiles_cover_the_image():
    for hw in [(3000, 4000), (640, 640), (500, 2000)]:
        tiles = make_tiles(hw, 960, 0.2)
        covered = np.zeros(hw, bool)
        for x1, y1, x2, y2 in tiles:
            assert x2 - x1 <= 960 and y2 - y1 <= 960
            covered[y1:y2, x1:x2] = True
        assert covered.all()


def test_merge_tiles_joins_a_box_cut_by_a_tile_edge():
    dets = Detections(
        [[100, 100, 190, 160], [102, 98, 300, 158], [500, 500, 520, 520], [105, 100, 200, 160]],
        [0.9, 0.8, 0.7, 0.6],
        [CLASS_IDS["car"], CLASS_IDS["car"], CLASS_IDS["car"], CLASS_IDS["person"]],
    )
    merged = merge_tiles(dets, 0.6)
    assert len(merged) == 3
    car = merged[(merged.class_id == CLASS_IDS["car"]) & (merged.confidence == np.float32(0.9))]
    assert car.xyxy.tolist() == [[100, 98, 300, 160]]  # the cut part and the whole become their union


def test_merge_tiles_compares_a_grown_box_again():
    # a pile cut by two tile edges: the first merge grows the box over a third part it did not overlap before
    litter = CLASS_IDS["litter"]
    parts = [[0, 0, 100, 100], [30, 0, 130, 100], [90, 0, 140, 100]]  # the third overlaps the first by 0.2
    merged = merge_tiles(Detections(parts, [0.9, 0.8, 0.7], [litter] * 3), 0.6)
    assert merged.xyxy.tolist() == [[0, 0, 140, 100]] and merged.confidence.tolist() == [np.float32(0.9)]
    # the most confident box grows into a box kept before (the second overlapped it by 0.17 at first)
    parts = [[190, 0, 250, 100], [100, 0, 200, 100], [130, 0, 230, 100]]
    merged = merge_tiles(Detections(parts, [0.95, 0.9, 0.8], [litter] * 3), 0.6)
    assert merged.xyxy.tolist() == [[100, 0, 250, 100]] and merged.confidence.tolist() == [np.float32(0.95)]


def test_merge_tiles_keeps_apart_what_one_pass_kept_apart():
    # four cars parked in a row, in perspective: each farther one smaller and partly behind the nearer one
    # (intersection over the smaller 0.6-0.76). One pass found all four: they are four cars, not one
    car = CLASS_IDS["car"]
    row = np.array([[0, 0, 400, 300], [220, 40, 460, 220], [350, 70, 494, 178], [440, 85, 526, 150]], np.float32)
    cars = Detections(row, [0.9, 0.85, 0.8, 0.75], [car] * 4)
    assert len(merge_tiles(cars, 0.6, passes=np.zeros(4, int))) == 4
    # the same cars found again by a tile (pass 1): each tile box joins its own car, not a neighbour
    again = Detections.merge([cars, Detections(row + 2, [0.7, 0.65, 0.6, 0.55], [car] * 4)])
    merged = merge_tiles(again, 0.6, passes=np.repeat([0, 1], 4))
    assert len(merged) == 4
    np.testing.assert_allclose(merged.xyxy, row + np.array([0, 0, 2, 2], np.float32))


def test_tiled_inference_finds_small_objects_the_full_pass_misses(detector, sample_photos):
    """People shrunk into a big canvas vanish at 640 px; tiles bring them back, without duplicates."""
    image = read_image(next(p for p in sample_photos if "scooter" in p.name))
    canvas = np.full((3200, 4000, 3), 114, np.uint8)
    canvas[1000 : 1000 + image.shape[0], 1500 : 1500 + image.shape[1]] = image
    full = detector.detect(canvas, tile=False)
    tiled = detector.detect(canvas, tile=True)
    assert tiled.class_names.count("person") > full.class_names.count("person")
    iou = box_iou(tiled.xyxy, tiled.xyxy)
    same = tiled.class_id[:, None] == tiled.class_id[None, :]
    np.fill_diagonal(iou, 0)
    assert not ((iou > 0.7) & same).any()
