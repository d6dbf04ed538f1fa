"""k-fold by patient: every image in exactly one test fold, patients never split, balanced by images, seeded; fold
folders are ordinary PREPARED folders made from the source's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestxray.data.folds import FOLDS_CSV, check_folds, make_folds, plan_folds
from chestxray.data.shards import iter_split_samples, read_manifest
from chestxray.errors import ConfigError, DataError


def _ids(n_patients: int = 120, seed: int = 0) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i:03d}" for i in range(n_patients)], rng.integers(1, 5, size=n_patients))
    return pd.Series([f"img{i}" for i in range(len(patients))]), pd.Series(patients)


def test_folds_group_patients_balance_images_and_follow_the_seed() -> None:
    images, patients = _ids()
    plan = plan_folds(images, patients, 5, seed=0)
    table = plan.table
    assert table.groupby("patient_id")["fold"].nunique().max() == 1  # GroupKFold: a patient in one fold
    sizes = table["fold"].value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4] and sizes.max() - sizes.min() <= 6  # about len/5 each
    for i in range(5):
        split = table[f"split_fold{i}"]
        assert (split[table["fold"] == i] == "test").all() and (split[table["fold"] != i] != "test").all()
        assert table.groupby("patient_id")[f"split_fold{i}"].nunique().max() == 1
        share = (split == "val").sum() / (split != "test").sum()
        assert 0.08 < share < 0.18  # 1/8 of the other folds
    again = plan_folds(images.sample(frac=1, random_state=1), patients.sample(frac=1, random_state=1), 5, seed=0)
    assert again.table.set_index("image_id")["fold"].sort_index().equals(table.set_index("image_id")["fold"]
                                                                         .sort_index())
    other = plan_folds(images, patients, 5, seed=1)
    assert (other.table["fold"] != table["fold"]).mean() > 0.5


def test_bad_fold_counts() -> None:
    with pytest.raises(ConfigError, match="at least 2 folds"):
        check_folds(1)
    images, patients = _ids(3)
    with pytest.raises(DataError, match="3 patient\\(s\\) cannot fill 5 folds"):
        plan_folds(images, patients, 5)


def test_fold_folders_are_prepared_folders_of_the_source_pixels(synthetic_prepared: Path, tmp_path: Path) -> None:
    source = read_manifest(synthetic_prepared)
    pixels = {s["image_id"]: s["image"] for split in source["splits"]
              for s in iter_split_samples(synthetic_prepared, split, source)}
    folders = make_folds(synthetic_prepared, tmp_path / "folds", 3, seed=0)
    plan = pd.read_csv(tmp_path / "folds" / FOLDS_CSV, dtype=str)
    tested: list[str] = []
    for i, folder in enumerate(folders):
        manifest = read_manifest(folder)
        assert manifest["folds"]["k"] == 3 and manifest["folds"]["fold"] == i
        assert manifest["image_size"] == source["image_size"] and manifest["labels"] == source["labels"]
        by_split = {split: list(iter_split_samples(folder, split, manifest)) for split in ("train", "val", "test")}
        patients = [{s["patient_id"] for s in by_split[x]} for x in ("train", "val", "test")]
        assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
        assert sum(len(v) for v in by_split.values()) == len(pixels)
        test_ids = [s["image_id"] for s in by_split["test"]]
        assert sorted(test_ids) == sorted(plan.loc[plan["fold"] == str(i), "image_id"])
        tested += test_ids
        sample = by_split["train"][0]
        assert np.array_equal(sample["image"], pixels[sample["image_id"]])  # copied, not decoded again
        positives = np.sum([s["labels"] for s in by_split["train"]], axis=0).tolist()
        assert manifest["splits"]["train"]["positives"] == positives
    assert sorted(tested) == sorted(pixels)  # every image tested exactly once
    stamp = (folders[0] / "manifest.json").stat().st_mtime_ns
    make_folds(synthetic_prepared, tmp_path / "folds", 3, seed=0)  # up to date: nothing rewritten
    assert (folders[0] / "manifest.json").stat().st_mtime_ns == stamp
