"""Exploration: counts per finding and split, co-occurrence, metadata, sample grid (skipping unreadable images)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import chestxray.data.augment
from chestxray.data.explore import (
    cooccurrence,
    explore,
    explore_catalog,
    finding_counts,
)
from chestxray.data.sources import read_nih, write_catalog
from chestxray.data.split import assign_splits
from chestxray.data.synth import make_synthetic
from chestxray.errors import DataError


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory):
    folder = make_synthetic(tmp_path_factory.mktemp("synth"), n=30, size=32, seed=1)
    return assign_splits(read_nih(folder / "labels.csv", folder / "images"), seed=0)


def test_counts_and_cooccurrence(catalog) -> None:
    counts = finding_counts(catalog)
    matrix = catalog.label_matrix
    assert counts.loc["Nodule", "images"] == matrix[:, catalog.labels.index("Nodule")].sum()
    assert counts.loc["No Finding", "images"] == (matrix.sum(1) == 0).sum()
    per_split = counts["images_train"] + counts["images_val"] + counts["images_test"]
    assert (per_split == counts["images"]).all()
    assert counts["share_with_normal"].sum() == pytest.approx(1.0, abs=1e-3)
    assert counts["share_without_normal"].drop("No Finding").sum() == pytest.approx(1.0, abs=1e-3)
    nodule_patients = catalog.table.loc[catalog.table["Nodule"] == 1, "patient_id"].nunique()
    assert counts.loc["Nodule", "patients"] == nodule_patients
    co = cooccurrence(catalog)
    assert (co.to_numpy().diagonal() == matrix.sum(0)).all() and (co == co.T).all().all()


def test_explore_writes_files_and_skips_missing_images(catalog, tmp_path: Path) -> None:
    broken = catalog.table.copy()
    broken.loc[broken.index[:3], "path"] = str(tmp_path / "gone.png")
    damaged = type(catalog)(broken, catalog.labels, catalog.task, catalog.source, catalog.info)
    result = explore_catalog(damaged, tmp_path / "out", n_samples=10, seed=0)
    names = {p.name for p in result.files}
    assert {"findings.csv", "cooccurrence.csv", "findings.png", "cooccurrence.png", "age.csv", "sex.csv",
            "view.csv", "age.png", "samples.png"} <= names
    assert all(p.stat().st_size > 0 for p in result.files)
    assert result.samples_skipped == 3 and result.samples_shown == 10
    written = pd.read_csv(tmp_path / "out" / "findings.csv", index_col=0)
    assert written.loc["Nodule", "images"] == result.findings.loc["Nodule", "images"]


def test_explore_prepared_folder_calls_augment_grid(catalog, tmp_path: Path, monkeypatch) -> None:
    cat_dir = write_catalog(catalog, tmp_path / "cat")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text('{"format": "chestxray-prepared/1", "catalog": "%s"}' % cat_dir)
    calls = []

    def fake_grid(prepared_dir, out_dir, policy, n=16, seed=0):
        calls.append((Path(prepared_dir), policy, n, seed))
        return Path(out_dir) / "augment.png"

    monkeypatch.setattr(chestxray.data.augment, "write_augment_grid", fake_grid)
    result = explore(prepared, tmp_path / "out", augment="minimal", n_samples=4)
    assert calls == [(prepared, "minimal", 16, 0)]
    assert result.augment_grid == tmp_path / "out" / "augment.png" and not result.findings.empty
    explore(prepared, tmp_path / "out_seed", augment="minimal", n_samples=4, seed=3)
    assert calls[-1] == (prepared, "minimal", 16, 3)  # the seed reaches the augmentation grid too
    with pytest.raises(DataError, match="--augment needs a prepared folder"):
        explore(cat_dir, tmp_path / "out2", augment="minimal")
    (prepared / "manifest.json").write_text('{"format": "something-else/9", "catalog": "%s"}' % cat_dir)
    with pytest.raises(DataError, match="manifest.json: format 'something-else/9'"):
        explore(prepared, tmp_path / "out4")
    with pytest.raises(DataError, match="no such catalog folder"):
        explore(tmp_path / "nowhere", tmp_path / "out3")
