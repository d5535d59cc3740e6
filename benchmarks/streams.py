"""How many cameras one machine watches: 720p 25 fps H.264 streams at 1 sample/s each, lag under 2 s.

Streams: a 1280x720, 25 fps, GOP 25 (one keyframe per second, as on most CCTV) H.264 clip generated
from the bundled sample video, played by N looping camera sources at real time (each source decodes
its own copy, exactly the work a live RTSP camera costs). The whole product pipeline runs: decoding,
sampling, ONE batched detector call per round, tracking, zones, rules.

A trial with N streams passes when, after a warm-up, every camera got at least 90 % of its samples
processed and its lag (frame live -> processing done) stayed under 2 s (95th percentile). The search
doubles N until a trial fails, then bisects. Both decoding modes are measured: full decoding and
keyframe-only (``decode: keyframes``). The reference, measured in the same run: ultralytics'
``model.track(source, stream=True)`` (ByteTrack) on one stream of the same clip, in frames/s.

    python benchmarks/streams.py [--trial-s 20] [--max 64] [--json]

``--json`` prints exactly ``{"keyframe_only": {"max_streams": N}, "full_decode": {"max_streams": N},
"ultralytics_track": {"fps": F}}``. Needs the train extra (ultralytics, lap) for the reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.latency import machine  # noqa: E402

SOURCE = REPO / "pipeline" / "samples" / "videos" / "car-detection.mp4"
MAX_LAG_S = 2.0
MIN_RATE = 0.9


def make_clip(path: Path, seconds: float = 20.0) -> Path:
    """720p 25 fps GOP 25 H.264 from the sample video (12.5 fps: in-between frames are blends)."""
    import av
    import cv2
    from synth import write_h264

    frames = [f.to_ndarray(format="bgr24") for f in av.open(str(SOURCE)).decode(video=0)]
    frames = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in frames[: int(seconds * 12.5) + 1]]

    def gen():
        for a, b in itertools.pairwise(frames):
            yield a
            yield cv2.addWeighted(a, 0.5, b, 0.5, 0)

    return write_h264(path, gen(), fps=25, gop=25, crf=26)


class NullSink:
    """Accepts violations and forgets them."""

    def emit(self, violation) -> None:
        pass

    def close(self) -> None:
        pass


def trial(n: int, mode: str, clip: Path, detector, seconds: float, warmup: float = 6.0) -> dict:
    """Run N looping 720p cameras for ``seconds`` after ``warmup``; report rates and lag."""
    from pipeline.cameras import CameraConfig, CamerasConfig
    from pipeline.streams import StreamProcessor

    cams = [
        CameraConfig(id=f"cam{i}", url=str(clip), loop=True, sample_fps=1.0, decode=mode, decode_threads=1)
        for i in range(n)
    ]
    proc = StreamProcessor(CamerasConfig(cameras=cams), detector, NullSink())
    lags: dict[str, list[float]] = {c.id: [] for c in cams}
    proc.start()
    try:
        time.sleep(warmup)
        start = {s.camera_id: s.frames_processed for s in proc.status()}
        cpu0 = cpu_seconds()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(0.25)
            for s in proc.status():
                if s.lag_s is not None:
                    lags[s.camera_id].append(s.lag_s)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds() - cpu0
        end = {s.camera_id: s.frames_processed for s in proc.status()}
    finally:
        proc.stop()
    rates = [(end[c] - start[c]) / elapsed for c in end]
    p95 = [float(np.percentile(v, 95)) if v else float("inf") for v in lags.values()]
    worst_lag = max(p95)  # frames carry the time they were due live: a decoder that falls behind shows here
    ok = min(rates) >= MIN_RATE and worst_lag < MAX_LAG_S
    return {
        "streams": n,
        "ok": ok,
        "min_rate": round(min(rates), 2),
        "lag_p95_s": round(worst_lag, 2),
        "cpu_ms_per_stream_s": round(1000 * cpu / elapsed / n, 1),
    }


def cpu_seconds() -> float:
    """CPU time (user + system) this process used so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_cost(mode: str, clip: Path, seconds: float = 10.0, n: int = 2) -> float:
    """CPU milliseconds to decode and sample one second of one 720p25 stream (readers only, no detector).

    Measured per second of VIDEO decoded, not per wall second, so a busy machine does not flatter it.
    """
    from pipeline.cameras import CameraConfig
    from pipeline.sources import CameraReader

    readers = [
        CameraReader(CameraConfig(id=f"d{i}", url=str(clip), loop=True, sample_fps=1.0, decode=mode, speed=4))
        for i in range(n)
    ]
    for r in readers:
        r.start()
    time.sleep(2.0)
    pos0 = [r.last_frame_ts or 0.0 for r in readers]
    cpu0 = cpu_seconds()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for r in readers:
            r.take()
        time.sleep(0.05)
    cpu = cpu_seconds() - cpu0
    video_s = sum((r.last_frame_ts or 0.0) - p for r, p in zip(readers, pos0, strict=True))
    for r in readers:
        r.stop()
    for r in readers:
        r.join(5)
    return 1000 * cpu / max(video_s, 1e-9)


def max_streams(mode: str, clip: Path, detector, seconds: float, limit: int, log) -> tuple[int, list[dict]]:
    """Largest N that passes: doubling, then bisection."""
    runs = []
    good, bad, n = 0, None, 1
    while n <= limit:
        r = trial(n, mode, clip, detector, seconds)
        runs.append(r)
        log(describe(mode, r))
        if not r["ok"]:
            bad = n
            break
        good, n = n, n * 2
    while bad is not None and bad - good > 1:
        n = (good + bad) // 2
        r = trial(n, mode, clip, detector, seconds)
        runs.append(r)
        log(describe(mode, r))
        good, bad = (n, bad) if r["ok"] else (good, n)
    return good, runs


def describe(mode: str, r: dict) -> str:
    """One line about a trial."""
    return (
        f"  {mode:9} {r['streams']:3d} streams: samples/s per camera >= {r['min_rate']:.2f}, "
        f"lag p95 {r['lag_p95_s']:.2f} s, CPU {r['cpu_ms_per_stream_s']:.0f} ms/s per stream"
        f" -> {'ok' if r['ok'] else 'too many'}"
    )


def ultralytics_track_fps(clip: Path, frames: int = 200, warmup: int = 10) -> float:
    """Frames/s of ultralytics' own ``model.track(source, stream=True)`` (ByteTrack) on one stream."""
    import torch

    from models.registry import resolve
    from training import ultra

    torch.set_num_threads(os.cpu_count() or 1)
    model = ultra.yolo(resolve("default").file("pt"))
    n, t0 = 0, 0.0
    for _ in model.track(source=str(clip), stream=True, tracker="bytetrack.yaml", imgsz=640, verbose=False):
        n += 1
        if n == warmup:
            t0 = time.perf_counter()
        if n >= warmup + frames:
            break
    return (n - warmup) / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial-s", type=float, default=20.0, help="measured seconds per trial (after warm-up)")
    parser.add_argument("--max", type=int, default=64, help="largest number of streams to try")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    logging.basicConfig(level=logging.ERROR)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print

    from pipeline.detect import Detector

    detector = Detector()
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "720p25.mp4")
        say(
            f"{machine()}\nmodel {detector.version}; 720p 25 fps GOP 25 H.264, 1 sample/s per stream, "
            f"lag < {MAX_LAG_S:g} s, {args.trial_s:g} s per trial; load avg {os.getloadavg()[0]:.2f} at start"
        )
        decode = {mode: decode_cost(mode, clip) for mode in ("keyframes", "full")}
        say(
            f"decoding + sampling one 720p25 stream: {decode['full']:.0f} CPU ms per second of video fully decoded, "
            f"{decode['keyframes']:.0f} ms keyframe-only ({decode['full'] / decode['keyframes']:.1f}x less)"
        )
        results, runs = {}, {}
        for mode, name in (("keyframes", "keyframe_only"), ("full", "full_decode")):
            results[name], runs[name] = max_streams(mode, clip, detector, args.trial_s, args.max, say)
        fps = ultralytics_track_fps(clip)
    report = {
        "keyframe_only": {"max_streams": results["keyframe_only"]},
        "full_decode": {"max_streams": results["full_decode"]},
        "ultralytics_track": {"fps": round(fps, 1)},
    }
    if args.json:
        print(json.dumps(report))
    else:
        k, f = results["keyframe_only"], results["full_decode"]
        print(f"keyframe-only decoding: {k} streams ({k * 25} video frames/s watched)")
        print(f"full decoding:          {f} streams ({f * 25} video frames/s watched)")
        print(f"ultralytics model.track on one stream: {fps:.1f} frames/s")
        print(
            f"ratios: keyframe-only watches {k * 25 / fps:.1f}x and full decoding {f * 25 / fps:.1f}x the video "
            f"ultralytics' tracker keeps up with; keyframe-only vs full decoding: {k / max(f, 1):.1f}x streams"
        )
        for name in ("keyframe_only", "full_decode"):
            best = max((r for r in runs[name] if r["ok"]), key=lambda r: r["streams"], default=None)
            if best:
                cost = best["cpu_ms_per_stream_s"]
                print(
                    f"{name}: at {best['streams']} streams the whole pipeline used {cost:.0f} CPU ms per stream per "
                    f"second: two cores of its own would hold about {2000 / cost:.0f} (an estimate, not a trial)"
                )
        print(f"load avg at end {os.getloadavg()[0]:.2f} (the machine is shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
