"""Exploration: counts per finding and split, co-occurrence, metadata, sample grid (skipping unreadable images)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import chestxray.data.augment
import chestxray.data.explore
from chestxray.data.explore import (
    allocate,
    cooccurrence,
    explore,
    explore_catalog,
    finding_counts,
    sample_grid,
)
from chestxray.data.manifest import seal
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
    # prevalence is per image (and per patient), not a share of label mentions
    assert counts.loc["No Finding", "prevalence_images"] == pytest.approx((matrix.sum(1) == 0).mean(), abs=1e-4)
    assert counts.loc["Nodule", "prevalence_images"] == pytest.approx(matrix[:, catalog.labels.index("Nodule")].mean(),
                                                                      abs=1e-4)
    nodule_patients = catalog.table.loc[catalog.table["Nodule"] == 1, "patient_id"].nunique()
    assert counts.loc["Nodule", "patients"] == nodule_patients
    assert counts.loc["Nodule", "prevalence_patients"] == pytest.approx(
        nodule_patients / catalog.table["patient_id"].nunique(), abs=1e-4)
    co = cooccurrence(catalog)
    assert (co.to_numpy().diagonal() == matrix.sum(0)).all() and (co == co.T).all().all()


def test_explore_writes_files_and_skips_missing_images(catalog, tmp_path: Path) -> None:
    broken = catalog.table.copy()
    broken.loc[broken.index[:3], "path"] = str(tmp_path / "gone.png")
    damaged = type(catalog)(broken, catalog.labels, catalog.task, catalog.source, catalog.info)
    result = explore_catalog(damaged, tmp_path / "out", n_samples=30, seed=0)  # every image drawn: 3 cannot be
    names = {p.name for p in result.files}
    assert {"findings.csv", "cooccurrence.csv", "shortcuts.csv", "findings.png", "cooccurrence.png", "age.csv", "sex.csv",
            "view.csv", "age.png", "samples.png"} <= names
    assert all(p.stat().st_size > 0 for p in result.files)
    assert result.samples_skipped == 3 and result.samples_shown == 27
    written = pd.read_csv(tmp_path / "out" / "findings.csv", index_col=0)
    assert written.loc["Nodule", "images"] == result.findings.loc["Nodule", "images"]


def test_explore_prepared_folder_calls_augment_grid(catalog, tmp_path: Path, monkeypatch) -> None:
    cat_dir = write_catalog(catalog, tmp_path / "cat")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    empty = {"count": 0, "shards": [], "shard_counts": [], "shard_bytes": [], "shard_sha256": [],
             "positives": [0] * len(catalog.labels)}
    manifest = seal({"format": "chestxray-prepared/1", "labels": list(catalog.labels), "image_size": 32,
                     "splits": {"train": empty}, "catalog": str(cat_dir)})
    (prepared / "manifest.json").write_text(json.dumps(manifest))
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


def test_sample_grid_is_stratified_and_seeded(tmp_path: Path, monkeypatch) -> None:
    """A 26 %-normal binary set gives about 4 NORMAL tiles of 16 (not the first n of a sorted draw); seeds differ."""
    assert allocate(pd.Series({"PNEUMONIA": 74, "NORMAL": 26}), 16).to_dict() == {"PNEUMONIA": 12, "NORMAL": 4}
    assert allocate(pd.Series({"a": 98, "b": 1, "c": 1}), 4).to_dict() == {"a": 2, "b": 1, "c": 1}
    import numpy as np
    from PIL import Image

    root = tmp_path / "folder"
    for cls, count in (("NORMAL", 13), ("PNEUMONIA", 37)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / cls / f"person{i}_{cls}_{i}.png")
    from chestxray.data.sources.folders import read_folder

    binary = read_folder(root)
    titles: list[list[str]] = []
    monkeypatch.setattr(chestxray.data.explore, "_mosaic", lambda shown, path: titles.append([t for _, t in shown]) or path)
    assert sample_grid(binary, tmp_path / "a.png", n=16, seed=0)[1:] == (16, 0)
    sample_grid(binary, tmp_path / "b.png", n=16, seed=1)
    assert titles[0].count("NORMAL") == 4 and titles[0].count("PNEUMONIA") == 12
    assert titles[0] != titles[1]
    # a binary task draws class counts per split (with the counts printed), not a one-cell co-occurrence
    texts: list[str] = []
    monkeypatch.setattr(chestxray.data.explore, "_save", lambda fig, path: texts.extend(
        t.get_text() for ax in fig.axes for t in ax.texts + [c for b in ax.containers for c in []]) or path)
    names = {p.name for p in explore_catalog(binary, tmp_path / "out", n_samples=0).files}
    assert "classes.png" in names and "cooccurrence.png" not in names


def test_cooccurrence_plot_prints_counts(catalog, tmp_path: Path, monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(chestxray.data.explore, "_save", lambda fig, path: figures.append((path.name, fig)) or path)
    explore_catalog(catalog, tmp_path, n_samples=0)
    fig = dict(figures)["cooccurrence.png"]
    co = cooccurrence(catalog)
    printed = [t.get_text() for t in fig.axes[0].texts]
    assert len(printed) == co.size and printed == [str(v) for v in co.to_numpy().ravel()]
    assert fig.axes[1].get_ylabel().startswith("images")  # the colour bar says what it measures
