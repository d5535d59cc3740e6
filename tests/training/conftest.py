"""Fixtures for the training tests: where ../shared is (real data; tests that need it skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``$STREETWATCH_SHARED``, else the ``shared`` folder beside the repository."""
    return Path(os.environ.get("STREETWATCH_SHARED") or REPO.parent / "shared")


@pytest.fixture
def shared_data() -> Path:
    """``shared/data`` (real labelled sets with their original class names); skips when absent."""
    data = shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (set STREETWATCH_SHARED)")
    return data
