"""catalog merge: vocabulary, missing labels in the catalog, a source column, patients within one split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import Catalog, load_catalog, save_catalog
from chestxray.data.merge import MergeInput, merge_catalogs


def _images(folder: Path, n: int, seed: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _catalog(folder: Path, labels: tuple[str, ...], n: int, patients: int, seed: int, **meta) -> Catalog:
    rng = np.random.default_rng(seed)
    paths = _images(folder, n, seed)
    table = pd.DataFrame({"image_id": [Path(p).name for p in paths], "path": paths,
                          "patient_id": [str(i % patients) for i in range(n)], "split": ""})
    for name in labels:
        table[name] = (rng.random(n) < 0.4).astype(np.uint8)
    for key, value in meta.items():
        table[key] = value
    return Catalog(table, labels, task="binary" if len(labels) == 1 else "multilabel", source="csv")


@pytest.fixture()
def three(tmp_path: Path) -> list[MergeInput]:
    nih = _catalog(tmp_path / "nih", ("Pneumonia", "Effusion", "Mass"), 60, 30, 0, sex="M", view="PA")
    kaggle = _catalog(tmp_path / "kaggle", ("PNEUMONIA",), 80, 40, 1, age=5.0)
    covid = _catalog(tmp_path / "covid", ("COVID-19", "Streptococcus"), 40, 20, 2, location="X")
    return [MergeInput("nih", nih), MergeInput("kaggle", kaggle), MergeInput("covid", covid)]


def test_merge_maps_labels_marks_missing_and_keeps_metadata(three: list[MergeInput], tmp_path: Path) -> None:
    merged = merge_catalogs(three, seed=0)
    table = merged.table
    assert merged.labels[:3] == ("Effusion", "Mass", "Pneumonia")  # NIH names first, in NIH order
    assert {"COVID-19", "Streptococcus", "Viral Pneumonia", "Bacterial Pneumonia"} <= set(merged.labels)
    kaggle = table[table["source"] == "kaggle"]
    assert kaggle["Pneumonia"].notna().all() and kaggle["Mass"].isna().all() and kaggle["COVID-19"].isna().all()
    np.testing.assert_array_equal(kaggle["Pneumonia"].to_numpy(), three[1].catalog.table["PNEUMONIA"].to_numpy())
    covid = table[table["source"] == "covid"]
    assert covid["Effusion"].isna().all()
    assert (covid.loc[covid["COVID-19"] == 1, "Pneumonia"] == 1).all()
    for column in ("sex", "view", "age", "location"):
        assert column in table.columns
    assert table["patient_id"].str.startswith(("nih:", "kaggle:", "covid:")).all()
    save_catalog(merged, tmp_path / "merged")
    again = load_catalog(tmp_path / "merged")  # missing survives the round trip as NaN, not 0
    assert again.table["Mass"].isna().sum() == table["Mass"].isna().sum() > 0
    assert again.annotated.sum() == merged.annotated.sum()


def test_merged_split_keeps_patients_within_one_split_and_is_stratified_by_source(three: list[MergeInput]) -> None:
    merged = merge_catalogs(three, ratios=(0.6, 0.2, 0.2), seed=3)
    table = merged.table
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    for source, rows in table.groupby("source"):
        shares = rows["split"].value_counts(normalize=True)
        assert set(shares.index) == {"train", "val", "test"}, source
        assert abs(shares["train"] - 0.6) < 0.2, (source, shares.to_dict())
    assert merge_catalogs(three, ratios=(0.6, 0.2, 0.2), seed=3).table["split"].tolist() == table["split"].tolist()


def test_identical_images_in_two_sources_link_their_patients(three: list[MergeInput]) -> None:
    nih, covid = three[0].catalog.table, three[2].catalog.table
    for k in range(5):  # five COVID files are byte-for-byte copies of NIH files of other patients
        shutil.copyfile(nih["path"].iloc[k * 2], covid["path"].iloc[k * 3])
    merged = merge_catalogs(three, ratios=(0.5, 0.25, 0.25), seed=1)
    assert merged.info["merge"]["duplicates"]["count"] == 5
    table = merged.table.set_index("image_id")
    for k in range(5):
        left, right = nih["image_id"].iloc[k * 2], covid["image_id"].iloc[k * 3]
        left_rows = table.loc[table["patient_id"] == "nih:" + nih["patient_id"].iloc[k * 2]]
        right_rows = table.loc[table["patient_id"] == "covid:" + covid["patient_id"].iloc[k * 3]]
        assert set(left_rows["split"]) == set(right_rows["split"]) and len(set(left_rows["split"])) == 1, (left, right)


def test_all_test_merge_and_keep_splits(three: list[MergeInput]) -> None:
    merged = merge_catalogs(three, ratios=(0, 0, 1))
    assert set(merged.table["split"]) == {"test"}
    for item, split in zip(three, ("train", "val", "test")):
        item.catalog.table["split"] = split
    kept = merge_catalogs(three, keep_splits=True)
    assert kept.table.groupby("source")["split"].first().to_dict() == {"nih": "train", "kaggle": "val", "covid": "test"}


def test_cli_merge_on_shared_samples(shared_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    nih = ["catalog", "nih", "--csv", str(shared_data / "nih-chestxray14/labels.csv"), "--images",
           str(shared_data / "nih-chestxray14/images"), "--out", str(tmp_path / "nih")]
    covid = ["catalog", "csv", str(shared_data / "covid-chestxray-dataset/metadata.csv"), "--path-col", "image_file",
             "--patient-col", "patientid", "--findings-col", "finding", "--sep", ",", "--out", str(tmp_path / "covid")]
    for argv in (nih, covid):
        assert runner.invoke(app, argv).exit_code == 0
    result = runner.invoke(app, ["catalog", "merge", f"nih={tmp_path / 'nih'}", f"covid={tmp_path / 'covid'}",
                                 "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert "2 sources" in result.output and "missing where a source does not annotate" in result.output
    merged = load_catalog(tmp_path / "merged")
    assert merged.table.loc[merged.table["source"] == "covid", "Atelectasis"].isna().all()
    assert merged.table.loc[merged.table["source"] == "nih", "COVID-19"].isna().all()
    bad = runner.invoke(app, ["catalog", "merge", str(tmp_path / "nih"), "--out", str(tmp_path / "one")])
    assert bad.exit_code != 0 and "at least two" in bad.output and "Traceback" not in bad.output


def test_source_mix_warns_when_one_source_holds_most_positives(three: list[MergeInput]) -> None:
    from chestxray.data.source_mix import catalog_composition, source_warnings

    merged = merge_catalogs(three)
    table = merged.table
    table.loc[table["source"] == "covid", "Pneumonia"] = 0  # Pneumonia positives now come from nih and kaggle only
    table.loc[table["source"] == "nih", "Pneumonia"] = 0
    table.loc[table.index[table["source"] == "nih"][:2], "Pneumonia"] = 1
    composition = catalog_composition(merged)
    row = composition[(composition["label"] == "Pneumonia") & (composition["source"] == "kaggle")].iloc[0]
    assert row["annotated"] == 80 and row["share"] > 0.9
    assert composition[(composition["label"] == "Mass") & (composition["source"] == "kaggle")]["annotated"].item() == 0
    lines = source_warnings(composition)
    assert any(line.startswith("Pneumonia:") and "source kaggle" in line for line in lines)
    assert not any(line.startswith("Mass:") for line in lines)  # one annotating source: nothing to confuse


def test_shortcut_check_scores_labels_where_annotated_and_predicts_the_source(tmp_path: Path) -> None:
    from chestxray.data.shortcuts import SOURCE_TARGET, shortcut_check
    from tests.merged_data import merged_catalog

    merged = merged_catalog(tmp_path, n=60)
    table = shortcut_check(merged)
    eff = table[(table["label"] == "Effusion")].iloc[0]
    assert eff["n_pos"] + eff["n_neg"] == merged.table["Effusion"].notna().sum()  # 'nod' images left out
    card = table[table["label"] == "Cardiomegaly"].iloc[0]
    assert card["n_pos"] + card["n_neg"] == 60  # annotated by 'full' only
    brightness = table[(table["label"] == SOURCE_TARGET + "eff") & (table["feature"] == "mean_intensity")].iloc[0]
    assert brightness["flagged"] and brightness["auroc"] > 0.9  # the eff source's images are brighter
