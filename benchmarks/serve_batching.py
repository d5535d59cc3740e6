"""Throughput of ``POST /v1/detect`` with and without micro-batching, measured in one run.

Starts the real service (``streetwatch serve``, uvicorn) twice on the same model — once with
micro-batching (concurrent requests share one ``detect_batch`` call, bounded wait) and once without
(each request runs its own detector call on the thread pool) — and drives each with ``--clients``
concurrent clients posting camera frames (same size, as from a fleet of cameras: frames of the bundled
video). Prints images/second, latency percentiles, the mean batch size, and the ratio.

    python benchmarks/serve_batching.py [--clients 8] [--requests 96] [--max-batch 8] [--wait-ms 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.latency import machine  # noqa: E402


def frames(n: int = 16) -> list[bytes]:
    """JPEG frames of the bundled demo video."""
    cap = cv2.VideoCapture(str(REPO / "pipeline" / "samples" / "videos" / "car-detection.mp4"))
    out = []
    while len(out) < n:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    cap.release()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir: Path, config: dict) -> tuple[subprocess.Popen, str, str]:
    """The service with ``config``; returns the process, its URL and an ingest key."""
    data = workdir / "data"
    cfg = workdir / "service.yaml"
    cfg.write_text(yaml.safe_dump(config))
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "keys",
            "create",
            "--role",
            "ingest",
            "--name",
            "bench",
            "--data-dir",
            str(data),
            "--config",
            str(cfg),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--config",
            str(cfg),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("service did not become ready")


async def drive(url: str, key: str, images: list[bytes], clients: int, requests: int) -> tuple[float, list[float]]:
    """Seconds for ``requests`` detections from ``clients`` concurrent clients, and each request's latency."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    latencies: list[float] = []
    todo = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        for i in todo:
            t = time.perf_counter()
            r = await c.post(url + "/v1/detect", content=images[i % len(images)], headers=headers)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
        warm = iter(range(clients * 2))
        await asyncio.gather(*(c.post(url + "/v1/detect", content=images[0], headers=headers) for _ in warm))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        return time.perf_counter() - t0, latencies


def mean_batch(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = float(re.search(r"^streetwatch_detector_batch_size_sum ([\d.e+]+)", text, re.M).group(1))
    count = float(re.search(r"^streetwatch_detector_batch_size_count ([\d.e+]+)", text, re.M).group(1))
    return total / count if count else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=8.0)
    parser.add_argument("--model", default="default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    images = frames()
    h, w = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_COLOR).shape[:2]
    results = {}
    for name, batching in (
        ("without batching", {"enabled": False}),
        ("micro-batched", {"enabled": True, "max_batch": args.max_batch, "max_wait_ms": args.wait_ms}),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            proc, url, key = start(Path(tmp), {"batching": batching, "detector": {"model": args.model}})
            try:
                seconds, lat = asyncio.run(drive(url, key, images, args.clients, args.requests))
                batch = mean_batch(url) if batching["enabled"] else 1.0
            finally:
                proc.terminate()
                proc.wait(30)
        lat.sort()
        results[name] = {
            "images_per_s": args.requests / seconds,
            "p50_ms": statistics.median(lat) * 1000,
            "p95_ms": lat[int(len(lat) * 0.95) - 1] * 1000,
            "mean_batch": batch,
        }
    ratio = results["micro-batched"]["images_per_s"] / results["without batching"]["images_per_s"]
    if args.json:
        print(
            json.dumps(
                {"machine": machine(), "frame": [w, h], "clients": args.clients, "results": results, "ratio": ratio}
            )
        )
        return 0
    print(
        f"POST /v1/detect, {args.clients} concurrent clients, {args.requests} requests of {w}x{h} JPEG frames, "
        f"model {args.model}; {machine()}"
    )
    print(f"{'mode':<18} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'mean batch':>11}")
    for name, r in results.items():
        print(f"{name:<18} {r['images_per_s']:>9.1f} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} {r['mean_batch']:>11.2f}")
    print(f"throughput ratio micro-batched / without: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
