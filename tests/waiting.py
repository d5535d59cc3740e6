"""Polling helper for tests that wait on threads, worker processes and services."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what`` after ``timeout``
    seconds, or at once with the worker's output when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr else ""
            pytest.fail(f"the worker exited ({proc.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
