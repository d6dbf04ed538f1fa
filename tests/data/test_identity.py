"""Issue 22, catalogs: one patient, one image and one label however they are written; folder links followed,
unreadable folders and non-UTF-8 names reported, repeated columns refused, split ratios that leave val/test empty
refused (but a test-only catalog accepted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import load_catalog, save_catalog
from chestxray.data.sources import read_csv_table, read_folder, read_nih
from chestxray.data.split import assign_splits
from chestxray.errors import ConfigError, DataError
from tests.data import probes

runner = CliRunner()


def _run(*argv: object):
    return runner.invoke(app, [str(a) for a in argv], terminal_width=400)


def test_patient_written_three_ways_is_one_patient_in_one_split(tmp_path: Path) -> None:
    table = probes.patient_spellings(tmp_path)
    for seed in range(12):  # before: patient 1's three images landed in different splits for most seeds
        catalog = assign_splits(read_csv_table(table, "path", "patient", findings_col="finding"), seed=seed)
        first = catalog.table[catalog.table["image_id"].isin(["img/x0.png", "img/x1.png", "img/x2.png"])]
        assert set(first["patient_id"]) == {"1"} and first["split"].nunique() == 1
    assert catalog.table["patient_id"].nunique() == 9
    report = catalog.info["patient_ids"]
    assert report["merged"] == 2 and "whole numbers compared by value" in report["rule"]
    result = _run("catalog", "csv", table, "--path-col", "path", "--patient-col", "patient", "--findings-col",
                  "finding", "--out", tmp_path / "cat")
    assert result.exit_code == 0, result.output
    assert "9 patients" in result.output and "2 patient-id spelling(s) merged" in result.output
    saved = json.loads((tmp_path / "cat" / "catalog.json").read_text())
    assert saved["info"]["patient_ids"]["rule"].startswith("patient ids:")


def test_a_catalog_written_before_the_rule_is_refused_when_spellings_leak(tmp_path: Path) -> None:
    catalog = assign_splits(read_csv_table(probes.patient_spellings(tmp_path), "path", "patient",
                                           findings_col="finding"), seed=0)
    old = catalog.table.copy()
    old.loc[old["image_id"] == "img/x1.png", ["patient_id", "split"]] = ["01", "test"]
    old.loc[old["image_id"].isin(["img/x0.png", "img/x2.png"]), "split"] = "train"  # patient 1 in train whatever the seed
    catalog.table = old
    with pytest.raises(DataError, match=r"written in several ways lie in more than one split, e.g. \['01', '1'\]"):
        save_catalog(catalog, tmp_path / "old")


def test_one_file_written_three_ways_is_refused_naming_the_rows(tmp_path: Path) -> None:
    table = probes.same_file_three_ways(tmp_path)
    with pytest.raises(DataError, match=r"3 entries name only 1 file\(s\): e.g. 'img/x.png' \(file row 2\), "
                                        r"'./img/x.png' \(file row 3\), .* \(file row 4\) are all"):
        read_csv_table(table, "path", "patient", findings_col="finding")
    # one spelling each: './img/y.png' and the absolute path become the same ids as plain relative paths
    absolute = (tmp_path / "img" / "x.png").resolve()
    table.write_text(f"path,patient,finding\n{absolute},1,Mass\n./img/y.png,2,No Finding\n")
    catalog = read_csv_table(table, "path", "patient", findings_col="finding")
    assert catalog.table["image_id"].tolist() == ["img/x.png", "img/y.png"]


def test_label_names_differing_only_by_case_are_merged_with_a_word(tmp_path: Path) -> None:
    table = probes.label_case_twins(tmp_path)
    catalog = read_csv_table(table, "path", "patient", findings_col="finding")
    assert catalog.labels == ("Mass", "Nodule")  # NIH spelling wins; before: ('Mass', 'Nodule', 'mass')
    assert catalog.table["Mass"].tolist() == [1, 1, 1, 0, 0, 0]
    assert catalog.info["label_case_merged"] == {"mass": {"into": "Mass", "rows": 1}}
    result = _run("catalog", "csv", table, "--path-col", "path", "--patient-col", "patient", "--findings-col",
                  "finding", "--ratios", "0.5,0.25,0.25", "--out", tmp_path / "cat")
    assert result.exit_code == 0 and "merged by letter case: mass -> Mass" in result.output, result.output
    pd.DataFrame({"path": ["img/x0.png"], "patient": [1], "Mass": [1], "mass": [0]}).to_csv(tmp_path / "c.csv",
                                                                                          index=False)
    with pytest.raises(DataError, match="label columns 'Mass' and 'mass' differ only by letter case"):
        read_csv_table(tmp_path / "c.csv", "path", "patient", label_cols=["Mass", "mass"])


def test_class_folders_differing_by_case_are_one_class(tmp_path: Path) -> None:
    probes.class_folders(tmp_path, {"NORMAL": 3, "PNEUMONIA": 3, "pneumonia": 1})
    catalog = read_folder(tmp_path)
    assert catalog.task == "binary" and catalog.labels == ("PNEUMONIA",) and catalog.table["PNEUMONIA"].sum() == 4
    assert catalog.info["label_case_merged"] == {"pneumonia": {"into": "PNEUMONIA", "rows": 1}}


def test_repeated_column_name_is_refused(tmp_path: Path) -> None:
    table = probes.repeated_column(tmp_path)
    result = _run("catalog", "csv", table, "--path-col", "path", "--patient-col", "Patient ID", "--findings-col",
                  "finding", "--out", tmp_path / "cat")
    probes.one_line_error(result, r"t.csv: the header names the same column more than once: 'Patient ID' \(columns \[2, 3\]\)")


def test_class_folder_that_is_a_link_is_followed(tmp_path: Path) -> None:
    root = probes.class_folder_link(tmp_path / "root", tmp_path / "elsewhere")
    catalog = read_folder(root)  # before: the PNEUMONIA class was dropped silently ('only one class folder')
    assert catalog.labels == ("PNEUMONIA",) and int(catalog.table["PNEUMONIA"].sum()) == 4
    os.symlink(tmp_path / "elsewhere" / "PNEUMONIA", root / "VIRUS")  # two classes, one folder: refused
    with pytest.raises(DataError, match=r"8 entries name only 4 file\(s\).*each image must appear once"):
        read_folder(root)


def test_a_folder_link_loop_ends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    probes.class_folders(tmp_path, {"NORMAL": 2, "PNEUMONIA": 2})
    os.symlink(tmp_path, tmp_path / "PNEUMONIA" / "again")
    catalog = read_folder(tmp_path)
    assert len(catalog.table) == 4 and "a loop); not followed" in caplog.text


def test_unreadable_sub_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes.class_folders(tmp_path, {"NORMAL": 3, "PNEUMONIA": 3})
    probes.class_folders(tmp_path / "PNEUMONIA", {"more": 2})
    locked = str(tmp_path / "PNEUMONIA" / "more")
    scandir = os.scandir

    def refusing(path=".", *args):  # chmod 000 does not stop root, so the refusal is simulated
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", refusing)
    catalog = read_folder(tmp_path)
    assert len(catalog.table) == 6
    assert catalog.info["skipped"]["unreadable_folders"] == [f"{locked} (Permission denied)"]
    result = _run("catalog", "folder", tmp_path, "--out", tmp_path.parent / f"{tmp_path.name}-cat")
    assert result.exit_code == 0 and "1 unreadable folder(s) skipped" in result.output, result.output
    assert "more (Permission denied)" in result.output


def test_non_utf8_file_name_does_not_kill_catalog_folder(tmp_path: Path) -> None:
    probes.non_utf8_name(tmp_path / "src")
    result = _run("catalog", "folder", tmp_path / "src", "--out", tmp_path / "cat")
    assert result.exit_code == 0, result.output
    assert "1 non-UTF-8 name(s) left out" in result.output and "bad\\xff.png" in result.output
    assert len(load_catalog(tmp_path / "cat").table) == 6


def test_nih_case_variant_finding_and_numeric_patient_spellings(tmp_path: Path) -> None:
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    (tmp_path / "d.csv").write_text(header + "a.png,mass,0,007,5,M,PA\nb.png,Mass,1,7.0,5,M,PA\n"
                                    "c.png,No Finding,0,8,5,F,PA\n")
    catalog = read_nih(tmp_path / "d.csv")
    assert catalog.table["patient_id"].tolist() == ["7", "7", "8"] and catalog.table["Mass"].tolist() == [1, 1, 0]


@pytest.mark.parametrize("ratios", ["1,0,0", "0.9,0.1,0", "0.9,0,0.1", "0,0.5,0.5"])
def test_ratios_leaving_a_split_empty_are_refused(tmp_path: Path, ratios: str) -> None:
    table = probes.patient_spellings(tmp_path)
    result = _run("catalog", "csv", table, "--path-col", "path", "--patient-col", "patient", "--findings-col",
                  "finding", "--ratios", ratios, "--out", tmp_path / "cat")
    probes.one_line_error(result, r"leave .*empty: a catalog to train on needs all three .* test-only catalog for "
                           r"external validation is 0,0,1")
    assert not (tmp_path / "cat").exists()


def test_test_only_catalog_is_accepted(tmp_path: Path) -> None:
    probes.class_folders(tmp_path / "src" / "train", {"NORMAL": 3, "PNEUMONIA": 3})
    probes.class_folders(tmp_path / "src" / "test", {"NORMAL": 2, "PNEUMONIA": 2})
    result = _run("catalog", "folder", tmp_path / "src", "--ratios", "0,0,1", "--out", tmp_path / "cat")
    assert result.exit_code == 0 and "train 0 / val 0 / test 10" in result.output, result.output
    catalog = load_catalog(tmp_path / "cat")
    assert set(catalog.table["split"]) == {"test"} and catalog.info["split"]["method"].startswith("test only")
    with pytest.raises(ConfigError, match="leave val empty"):
        assign_splits(catalog, ratios=(0.9, 0.0, 0.1))
