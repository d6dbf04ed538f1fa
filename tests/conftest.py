"""Shared fixtures: the real samples in ../shared/data (by path, never copied) and tmp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from chestxray.data.samples import ENV_VAR, find_sample_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample collections (../shared/data beside the checkout; override with CHESTXRAY_DATA)."""
    root = find_sample_data(REPO)
    if root is None:
        pytest.skip(f"real samples not found beside {REPO}; set {ENV_VAR} to the shared/data folder")
    return root


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREPARED folder (32 px) of 600 synthetic NIH-layout images: a small CNN learns it in two epochs."""
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits
    from chestxray.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("synthetic-prepared")
    source = make_synthetic(root / "source", n=600, size=64, seed=0)
    catalog = assign_splits(read_nih(source / "labels.csv", source / "images"), seed=0)
    prepare_dataset(catalog, root / "prepared", size=32, workers=0)
    return root / "prepared"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing reaches the internet: downloads are off unless a test turns them on against its loopback server."""
    monkeypatch.setenv("CHESTXRAY_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
