"""The one backoff formula of every retry loop: doubling, jittered, bounded — also after days of failures."""

from __future__ import annotations

import pytest

from pipeline.retry import backoff_delay


def test_the_delay_doubles_from_initial_within_its_jitter():
    for failures, base in [(0, 0.5), (1, 1.0), (2, 2.0), (4, 8.0)]:
        got = [backoff_delay(0.5, 30, failures, jitter=0.25) for _ in range(50)]
        assert all(0.75 * base <= d <= base for d in got), (failures, got)
        assert max(got) - min(got) > 0  # jittered: clients failing together spread out


@pytest.mark.parametrize("failures", [7, 10, 100, 1100, 10**6])
def test_the_delay_never_passes_max_and_stays_spread_once_capped(failures):
    """An HTTP sink retrying every 30 s fails ~1000 times in a night; 2**1024 is no float: the old formula
    raised OverflowError there and its sender thread died. Once capped, retries still spread out."""
    got = [backoff_delay(0.25, 30, failures, jitter=0.25) for _ in range(50)]
    assert all(22.5 <= d <= 30 for d in got)
    assert len({round(d, 3) for d in got}) > 40  # not all exactly max_s: workers of one service out of step
