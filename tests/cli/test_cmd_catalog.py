"""`chestxray catalog nih|folder|csv`, `explore` and `synth` through the command line: outputs, summaries, exit 1."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import load_catalog

runner = CliRunner()


def _run(*argv: str):
    return runner.invoke(app, [str(a) for a in argv], terminal_width=200)


def test_catalog_nih_sample_with_images(shared_data: Path, tmp_path: Path) -> None:
    nih = shared_data / "nih-chestxray14"
    result = _run("catalog", "nih", "--csv", nih / "labels.csv", "--images", nih, "--out", tmp_path / "cat")
    assert result.exit_code == 0, result.output
    assert "816 images, 226 patients, 14 label(s) (multilabel)" in result.output
    catalog = load_catalog(tmp_path / "cat")
    assert len(catalog.table) == 816 and set(catalog.table["split"]) == {"train", "val", "test"}
    assert catalog.info["split"]["seed"] == 0 and catalog.info["missing_images"]["count"] == 0


def test_catalog_nih_metadata_only_then_explore(shared_data: Path, tmp_path: Path) -> None:
    result = _run("catalog", "nih", "--csv", shared_data / "nih-chestxray14" / "labels.csv", "--metadata-only",
                  "--out", tmp_path / "meta")
    assert result.exit_code == 0, result.output
    catalog = load_catalog(tmp_path / "meta")
    assert len(catalog.table) == 816 and catalog.table["path"].fillna("").eq("").all()
    result = _run("explore", tmp_path / "meta", "--out", tmp_path / "explore")
    assert result.exit_code == 0, result.output
    assert "0 sample images" in result.output and (tmp_path / "explore" / "cooccurrence.png").is_file()


def test_catalog_nih_full_table_reports_missing_images(shared_data: Path, tmp_path: Path) -> None:
    result = _run("catalog", "nih", "--csv", shared_data / "nih-metadata" / "Data_Entry_2017_v2020.csv.gz",
                  "--images", shared_data / "nih-chestxray14", "--views", "PA,AP", "--max-patients", "400",
                  "--out", tmp_path / "cat")
    assert result.exit_code == 0, result.output
    missing = pd.read_csv(tmp_path / "cat" / "missing_images.csv")
    catalog = load_catalog(tmp_path / "cat")
    assert catalog.table["patient_id"].nunique() <= 400 and len(missing) > 0
    assert f"{len(missing)} missing" in result.output and "missing_images.csv" in result.output
    assert catalog.info["missing_images"]["count"] == len(missing)


def test_catalog_folder_and_csv(shared_data: Path, tmp_path: Path) -> None:
    result = _run("catalog", "folder", shared_data / "kaggle-chest-xray-pneumonia", "--out", tmp_path / "kaggle",
                  "--seed", "3", "--ratios", "0.8,0.1,0.1")
    assert result.exit_code == 0, result.output
    assert "1269 images, 981 patients, 1 label(s) (binary)" in result.output
    assert load_catalog(tmp_path / "kaggle").info["split"]["ratios"] == pytest.approx([0.8, 0.1, 0.1])
    result = _run("catalog", "csv", shared_data / "covid-chestxray-dataset" / "metadata.csv", "--path-col",
                  "image_file", "--patient-col", "patientid", "--findings-col", "finding", "--sep", ",/",
                  "--out", tmp_path / "covid")
    assert result.exit_code == 0, result.output
    assert "253 images, 128 patients" in result.output


def test_synth_then_catalog_then_explore(tmp_path: Path) -> None:
    result = _run("synth", "--out", tmp_path / "synth", "--n", "24", "--size", "32", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "24 synthetic 32x32 images" in result.output
    result = _run("catalog", "nih", "--csv", tmp_path / "synth" / "labels.csv", "--images", tmp_path / "synth",
                  "--out", tmp_path / "cat")
    assert result.exit_code == 0, result.output
    result = _run("explore", tmp_path / "cat", "--out", tmp_path / "explore", "--samples", "4")
    assert result.exit_code == 0, result.output
    assert "Nodule" in result.output and "No Finding" in result.output
    assert "4 sample images" in result.output
    assert (tmp_path / "explore" / "findings.csv").is_file() and (tmp_path / "explore" / "samples.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["catalog", "nih", "--csv", "{tmp}/nowhere.csv", "--metadata-only", "--out", "{tmp}/o"],
     "nowhere.csv: no such file"),
    (["catalog", "nih", "--csv", "{tmp}/t.csv", "--out", "{tmp}/o"], "either --images DIR or --metadata-only"),
    (["catalog", "nih", "--csv", "{tmp}/t.csv", "--metadata-only", "--out", "{tmp}/o"],
     "t.csv: no column 'Finding Labels'"),
    (["catalog", "nih", "--csv", "{tmp}/bad.csv", "--metadata-only", "--out", "{tmp}/o"],
     "unknown finding name\\(s\\) 'Pneumonitis'"),
    (["catalog", "nih", "--csv", "{tmp}/bad.csv", "--metadata-only", "--ratios", "0.5,x", "--out", "{tmp}/o"],
     "--ratios '0.5,x'"),
    (["catalog", "folder", "{tmp}/empty", "--out", "{tmp}/o"], "empty: no images found"),
    (["catalog", "csv", "{tmp}/t.csv", "--path-col", "img", "--patient-col", "pid", "--out", "{tmp}/o"],
     "either label columns"),
    (["explore", "{tmp}/nowhere", "--out", "{tmp}/o"], "nowhere: no such catalog folder"),
])
def test_bad_input_exits_1_with_message(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "t.csv").write_text("Image Index,Patient ID\na.png,1\n")
    (tmp_path / "bad.csv").write_text("Image Index,Finding Labels,Patient ID\na.png,Pneumonitis,1\n")
    (tmp_path / "empty").mkdir()
    result = _run(*[a.format(tmp=tmp_path) for a in argv])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output
    assert re.search(message, result.output.replace("\n", "")), result.output
    assert not (tmp_path / "o" / "catalog.csv").exists()


def test_catalog_folder_summary_counts_unmatched_names_and_ignored_files(tmp_path: Path) -> None:
    from PIL import Image

    for cls, stem in (("NORMAL", "00000011_000"), ("NORMAL", "00000011_001"), ("NORMAL", "scanB"),
                      ("PNEUMONIA", "person3_virus_1"), ("PNEUMONIA", "scanA"), ("PNEUMONIA", "person4_bacteria_2")):
        (tmp_path / "in" / cls).mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), 90).save(tmp_path / "in" / cls / f"{stem}.png")
    (tmp_path / "in" / "NORMAL" / "readme.txt").write_text("x")
    result = _run("catalog", "folder", tmp_path / "in", "--out", tmp_path / "cat")
    assert result.exit_code == 0, result.output
    assert "6 images, 5 patients" in result.output
    assert "1 non-image file(s) ignored (.txt 1)" in result.output
    assert "2 file name(s) matched no patient rule, one patient each (e.g. scanB; --patient-regex" in result.output
