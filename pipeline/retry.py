"""Exponential backoff with jitter, one formula for every retry loop (cameras, the HTTP sink, webhooks)."""

from __future__ import annotations

import random


def backoff_delay(initial_s: float, max_s: float, failures: int, jitter: float = 0.1) -> float:
    """Seconds to wait after ``failures`` failures in a row (0: the first retry): ``initial_s`` doubling up
    to ``max_s``, then shortened by up to ``jitter`` (a fraction) at random, so that clients failing together
    — cameras behind one switch, workers of one service — do not retry in step, also once capped. Never more
    than ``max_s``, also after days of failures (2**1024 seconds would not even be a float)."""
    base = min(max_s, initial_s * 2.0 ** min(max(failures, 0), 64))
    return base * random.uniform(1 - jitter, 1)
