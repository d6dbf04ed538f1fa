"""Multi-class catalogs: Kaggle subtypes from file names, CSV merging and views (real COVID collection), one-hot
validation, and classes missing from a split warned about at catalog time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import Catalog, validate_catalog
from chestxray.data.explore import finding_counts
from chestxray.data.sources import read_csv_table, read_folder
from chestxray.data.split import assign_splits
from chestxray.data.tasks import parse_merges
from chestxray.errors import ConfigError, DataError


def test_kaggle_subtypes_from_file_names(shared_data: Path) -> None:
    catalog = read_folder(shared_data / "kaggle-chest-xray-pneumonia", kaggle_subtypes=True)
    assert catalog.task == "multiclass" and catalog.labels == ("NORMAL", "BACTERIA", "VIRUS")
    counts = catalog.table[list(catalog.labels)].sum()
    assert counts.tolist() == [329, 635, 305]  # SOURCE.md: 329 normal, 635 bacteria, 305 virus
    virus = catalog.table["image_id"].str.contains("_virus_")
    assert catalog.table.loc[virus, "VIRUS"].all() and not catalog.table.loc[~virus, "VIRUS"].any()
    assert finding_counts(catalog)["images"].to_dict() == {"NORMAL": 329, "BACTERIA": 635, "VIRUS": 305}  # explore
    binary = read_folder(shared_data / "kaggle-chest-xray-pneumonia", task="multiclass")
    assert binary.labels == ("NORMAL", "PNEUMONIA") and (binary.label_matrix.sum(1) == 1).all()


def test_class_regex_and_task_choices_on_folders(tmp_path: Path) -> None:
    for cls, names in (("NORMAL", ["IM-1-0001", "IM-2-0001"]), ("PNEUMONIA", ["p1_left_1", "p2_right_1", "p3_x_1"])):
        (tmp_path / cls).mkdir()
        for name in names:
            Image.new("L", (8, 8)).save(tmp_path / cls / f"{name}.png")
    catalog = read_folder(tmp_path, class_regex=r"_(left|right)_")
    assert catalog.labels == ("NORMAL", "PNEUMONIA", "left", "right")  # unmatched files keep their folder class
    assert catalog.info["class_rule"].startswith("group 1 of")
    with pytest.raises(ConfigError, match="class folders hold one class per image"):
        read_folder(tmp_path, task="multilabel")
    with pytest.raises(ConfigError, match="not both"):
        read_folder(tmp_path, class_regex="_(x)_", kaggle_subtypes=True)
    with pytest.raises(ConfigError, match="needs a group"):
        read_folder(tmp_path, class_regex="_x_")


def test_covid_findings_as_classes_with_merges_and_views(shared_data: Path) -> None:
    root = shared_data / "covid-chestxray-dataset"
    merges = parse_merges(["Bacterial=Streptococcus,Klebsiella,Legionella", "Other=Pneumocystis,Varicella,Lipoid"])
    catalog = read_csv_table(root / "metadata.csv", "image_file", "patientid", findings_col="finding", sep=",",
                             task="multiclass", merges=merges, views=["PA", "AP"])
    frame = pd.read_csv(root / "metadata.csv")
    kept = frame[frame["view"].isin(["PA", "AP"])]
    assert catalog.task == "multiclass" and catalog.labels[0] == "No Finding"
    assert set(catalog.labels) == {"No Finding", "ARDS", "Bacterial", "COVID-19", "Other", "Pneumonia"}
    assert catalog.table["Bacterial"].sum() == kept["finding"].isin(["Streptococcus", "Klebsiella", "Legionella"]).sum()
    assert set(catalog.table["view"]) == {"PA", "AP"}
    several = kept["finding"].str.contains(",").sum()  # 'COVID-19, ARDS': two classes, left out and counted
    assert len(catalog.table) == len(kept) - several and catalog.info["rows_without_one_class"]["count"] == several
    multilabel = read_csv_table(root / "metadata.csv", "image_file", "patientid", findings_col="finding", sep=",",
                                merges=merges)
    assert multilabel.task == "multilabel" and "Bacterial" in multilabel.labels and "Klebsiella" not in multilabel.labels


def test_bad_merges_views_and_rows_are_named(shared_data: Path) -> None:
    csv = shared_data / "covid-chestxray-dataset" / "metadata.csv"
    with pytest.raises(ConfigError, match="expected NEW=old1,old2"):
        parse_merges(["Bacterial"])
    with pytest.raises(ConfigError, match="merged into both"):
        parse_merges(["A=x", "B=x"])
    with pytest.raises(ConfigError, match=r"\['Klebsiela'\] occur nowhere"):
        read_csv_table(csv, "image_file", "patientid", findings_col="finding", merges={"Klebsiela": "Bacterial"})
    with pytest.raises(DataError, match="no rows with view in"):
        read_csv_table(csv, "image_file", "patientid", findings_col="finding", views=["LATERAL"])
    table = pd.DataFrame({"image_id": ["a", "b"], "path": ["a", "b"], "patient_id": ["1", "2"], "split": "",
                          "X": np.array([1, 1], dtype=np.uint8), "Y": np.array([0, 1], dtype=np.uint8)})
    with pytest.raises(DataError, match="do not have exactly one class"):
        validate_catalog(Catalog(table, ("X", "Y"), task="multiclass"))


def test_class_missing_from_a_split_is_warned_at_catalog_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for cls, n in (("NORMAL", 12), ("BACTERIA", 12), ("VIRUS", 1)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), 40 * i % 255).save(tmp_path / "src" / cls / f"{cls.lower()}{i}.png")
    with caplog.at_level("WARNING", logger="chestxray.data.split"):
        catalog = assign_splits(read_folder(tmp_path / "src"), seed=0)
    assert len(catalog.info["split"]["absent"]["VIRUS"]) == 2  # one patient: in one split, absent from two
    assert "class 'VIRUS' has no image in" in caplog.text and "NORMAL" not in caplog.text
    result = CliRunner().invoke(app, ["catalog", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "cat")])
    assert result.exit_code == 0, result.output
    assert '"absent"' in (tmp_path / "cat" / "catalog.json").read_text()
