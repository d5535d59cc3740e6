"""Runtime pipeline: decode, detect, track, zones, rules, cases. Needs onnxruntime, OpenCV and numpy only."""
