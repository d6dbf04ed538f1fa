"""Patient-level splits: seeded and stable, no patient overlap, blind to the labels, ratios by images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestxray.data.catalog import SPLITS, Catalog, validate_catalog
from chestxray.data.sources import read_nih
from chestxray.data.split import assign_splits, patient_split, split_hash, stratified_split
from chestxray.errors import ConfigError, DataError


@pytest.fixture(scope="session")
def nih_full(shared_data: Path) -> Catalog:
    """The full 112,120-row NIH table, read once (metadata-only)."""
    return read_nih(shared_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="session")
def nih_split(nih_full: Catalog) -> Catalog:
    return assign_splits(nih_full, seed=0)


def _patient_splits(catalog: Catalog) -> pd.Series:
    return catalog.table.groupby("patient_id")["split"].first()


def test_same_seed_same_split_different_seed_different(nih_full: Catalog, nih_split: Catalog) -> None:
    again = assign_splits(nih_full, seed=0)
    other = assign_splits(nih_full, seed=1)
    assert split_hash(again.table) == split_hash(nih_split.table) == nih_split.info["split"]["hash"]
    assert split_hash(other.table) != split_hash(nih_split.table)
    assert (other.table["split"] != nih_split.table["split"]).mean() > 0.2


def test_split_does_not_depend_on_row_order(nih_full: Catalog, nih_split: Catalog) -> None:
    shuffled = nih_full.table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    resplit = assign_splits(Catalog(shuffled, nih_full.labels, nih_full.task, nih_full.source), seed=0)
    assert _patient_splits(resplit).equals(_patient_splits(nih_split))


def test_zero_patient_overlap(nih_split: Catalog) -> None:
    validate_catalog(nih_split)
    assert nih_split.table.groupby("patient_id")["split"].nunique().max() == 1
    patients = [set(nih_split.split_table(s)["patient_id"]) for s in SPLITS]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])


def test_every_finding_in_every_split(nih_split: Catalog) -> None:
    """Not by construction (the split ignores labels) but by numbers: at NIH scale the rarest finding (Hernia,
    about 110 patients) reaches every split."""
    for split in SPLITS:
        positives = nih_split.split_table(split)[list(nih_split.labels)].sum()
        assert (positives > 0).all(), (split, positives[positives == 0].index.tolist())
    assert nih_split.split_table("val")["Hernia"].sum() >= 10


def test_ratios_by_images_and_info(nih_split: Catalog) -> None:
    shares = nih_split.table["split"].value_counts(normalize=True)
    for split, target in zip(SPLITS, (0.7, 0.1, 0.2)):
        assert abs(shares[split] - target) < 0.01, (split, shares[split])
    info = nih_split.info["split"]
    assert info["seed"] == 0 and info["ratios"] == pytest.approx([0.7, 0.1, 0.2])
    assert info["method"] == "patient-hash" and sum(info["images"].values()) == 112_120
    assert sum(info["patients"].values()) == 30_805


def test_labels_play_no_part_in_the_split() -> None:
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i:03d}" for i in range(200)], rng.integers(1, 6, size=200))
    one = (rng.random(len(patients)) < 0.3).astype(np.uint8)[:, None]
    other = rng.integers(0, 2, size=(len(patients), 5)).astype(np.uint8)
    for seed in range(3):
        part = patient_split(patients, (0.7, 0.1, 0.2), seed)
        assert np.array_equal(part, stratified_split(patients, one, (0.7, 0.1, 0.2), seed))
        assert np.array_equal(part, stratified_split(patients, other, (0.7, 0.1, 0.2), seed))
        assert pd.Series(part).groupby(patients).nunique().max() == 1
        assert sorted(set(part)) == [0, 1, 2]
    assert not np.array_equal(patient_split(patients, (0.7, 0.1, 0.2), 0), patient_split(patients, (0.7, 0.1, 0.2), 1))


def test_other_patients_move_only_a_few() -> None:
    """A patient's key depends on its id and the seed alone: adding 10% more patients re-deals only the patients
    near the ratio boundaries."""
    base = np.array([f"p{i:04d}" for i in range(2000)])
    more = np.r_[base, [f"q{i:04d}" for i in range(200)]]
    before = patient_split(base, (0.7, 0.1, 0.2), 0)
    after = patient_split(more, (0.7, 0.1, 0.2), 0)[: len(base)]
    assert 0 < (before != after).mean() < 0.05


def test_binary_and_three_class_catalogs_of_one_folder_split_alike(shared_data: Path) -> None:
    """Issue 23: NORMAL/PNEUMONIA and NORMAL/BACTERIA/VIRUS of the same Kaggle folder, same seed -> same split."""
    from chestxray.data.sources import read_folder

    root = shared_data / "kaggle-chest-xray-pneumonia"
    binary = assign_splits(read_folder(root), seed=3)
    three = assign_splits(read_folder(root, kaggle_subtypes=True), seed=3)
    assert binary.labels == ("PNEUMONIA",) and three.labels == ("NORMAL", "BACTERIA", "VIRUS")
    merged = binary.table[["image_id", "split"]].merge(three.table[["image_id", "split"]], on="image_id")
    assert len(merged) == len(binary.table) == len(three.table)
    assert (merged["split_x"] == merged["split_y"]).all()
    assert binary.info["split"]["hash"] == three.info["split"]["hash"]
    assert binary.info["split"]["images"] == three.info["split"]["images"]
    assert set(merged["split_x"]) == set(SPLITS)


def _tiny(split: list[str]) -> Catalog:
    table = pd.DataFrame({"image_id": [f"i{i}" for i in range(len(split))], "path": "",
                          "patient_id": [f"p{i // 2}" for i in range(len(split))], "split": split,
                          "A": np.arange(len(split)) % 3 == 0})
    table["A"] = table["A"].astype("uint8")
    return Catalog(table, ("A",), task="binary", source="tiny")


def test_source_split_kept_and_val_carved_from_train() -> None:
    catalog = _tiny(["train"] * 40 + ["test"] * 10)
    result = assign_splits(catalog, seed=0)
    assert (result.table["split"].iloc[40:] == "test").all()
    assert 0 < (result.table["split"] == "val").sum() < 20
    assert result.info["split"]["method"].startswith("source split kept; val carved")
    everything = assign_splits(catalog, seed=0, keep_source=False)
    assert (everything.table["split"].iloc[40:] != "test").any()


def test_bad_ratios_and_bad_source_splits() -> None:
    with pytest.raises(ConfigError, match="sum to 1.2"):
        assign_splits(_tiny([""] * 10), ratios=(0.7, 0.3, 0.2))
    with pytest.raises(ConfigError, match="three non-negative"):
        assign_splits(_tiny([""] * 10), ratios=(0.7, 0.3))
    with pytest.raises(DataError, match="patient\\(s\\) are in more than one of the source's splits"):
        assign_splits(_tiny(["train", "test"] * 5))
    with pytest.raises(DataError, match="split column holds \\['holdout'\\]"):
        assign_splits(_tiny(["train", "train", "holdout", "holdout"]))
