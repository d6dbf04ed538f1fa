"""Shared fixtures: the real samples in ../shared/data (by path, never copied) and tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHESTXRAY_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample collections (override with CHESTXRAY_DATA)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA}; set CHESTXRAY_DATA to the shared/data folder")
    return SHARED_DATA
