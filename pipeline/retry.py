"""Exponential backoff with jitter, one formula for every retry loop (cameras, the HTTP sink, webhooks)."""

from __future__ import annotations

import random


def backoff_delay(initial_s: float, max_s: float, failures: int, jitter: float = 0.1) -> float:
    """Seconds to wait after ``failures`` failures in a row (0: the first retry): ``initial_s`` doubling,
    jittered by ±``jitter`` so that clients failing together do not retry in step, never more than
    ``max_s`` — also after days of failures (the doubling stops once it passes max_s; 2**1024 seconds would
    not even be a float)."""
    delay = initial_s
    for _ in range(max(0, failures)):
        if delay >= max_s:
            break
        delay *= 2
    return min(max_s, delay * random.uniform(1 - jitter, 1 + jitter))
