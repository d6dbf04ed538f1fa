"""Issue 22, CSV injection: text cells the product writes (catalogs, quarantine lists, predictions, evaluation and
report tables) that start like a spreadsheet formula (=, +, -, @, tab, carriage return) get OWASP's leading
apostrophe; numbers, negative ones included, are left alone; the product reads its own files back unchanged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import load_catalog
from chestxray.files import read_csv, spreadsheet_safe, write_csv
from tests.data import probes


@pytest.mark.parametrize("cell, written", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3", "'-2+3"), ("@SUM(A1:A9)", "'@SUM(A1:A9)"), ("\tx", "'\tx"), ("'quoted", "''quoted"),
    ("-1.5", "-1.5"), ("+3", "+3"), ("-2e-3", "-2e-3"), ("0.25", "0.25"), ("plain.png", "plain.png"), ("", ""),
    (-0.5, -0.5), (None, None),
])
def test_one_cell(cell: object, written: object) -> None:
    assert spreadsheet_safe(cell) == written


def test_a_table_round_trips_through_the_product_s_own_reader(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image_id": ["=a.png", "-1", "@b", "'c", "d"], "p": [-0.5, 0.1, 0.2, 0.3, 0.4],
                          "=label": ["+x", "y", "z", "-", "w"]}, index=["=i", "j", "k", "l", "m"])
    write_csv(tmp_path / "t.csv", frame, index=True)
    text = (tmp_path / "t.csv").read_text()
    assert "'=a.png" in text and "\n=" not in text and ",=" not in text and ",-1," in text and "-0.5" in text
    back = read_csv(tmp_path / "t.csv", index_col=0, dtype={"image_id": str})
    assert back.equals(frame)


def test_catalog_prepare_and_predict_write_neutralised_cells(tmp_path: Path) -> None:
    for i, name in enumerate(["=HYPERLINK(evil).png", "@cmd.png", "plain.png", "-2.png"]):
        probes.png(tmp_path / "img" / name, seed=i)
    (tmp_path / "t.csv").write_text("path,patient,finding\nimg/=HYPERLINK(evil).png,=1+2,Mass\n"
                                    "img/@cmd.png,@p,No Finding\nimg/plain.png,-3,Mass\nimg/-2.png,4,No Finding\n")
    result = CliRunner().invoke(app, ["catalog", "csv", str(tmp_path / "t.csv"), "--path-col", "path",
                                      "--patient-col", "patient", "--findings-col", "finding", "--ratios",
                                      "0.5,0.25,0.25", "--out", str(tmp_path / "cat")])
    assert result.exit_code == 0, result.output
    raw = pd.read_csv(tmp_path / "cat" / "catalog.csv", dtype=str)  # what a spreadsheet sees
    assert not raw.map(lambda v: isinstance(v, str) and v[:1] in "=+@").any().any()
    assert "'=1+2" in raw["patient_id"].tolist() and "-3" in raw["patient_id"].tolist()  # a number stays a number
    catalog = load_catalog(tmp_path / "cat")  # the product reads its own file back unchanged
    assert set(catalog.table["patient_id"]) == {"=1+2", "@p", "-3", "4"}
    assert (tmp_path / "img" / "=HYPERLINK(evil).png").as_posix() in catalog.table["path"].tolist()
    from chestxray.models import build_model
    from chestxray.models.bundle import save_bundle

    torch.manual_seed(0)
    bundle = save_bundle(tmp_path / "bundle", build_model("cnn-tiny", num_labels=1), {
        "architecture": "cnn-tiny", "num_labels": 1, "in_chans": 1, "image_size": 32, "resize": "crop",
        "normalization": "gray", "labels": ["Mass"], "task": "binary"})
    result = CliRunner().invoke(app, ["predict", str(bundle), str(tmp_path / "img"), "--out",
                                      str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "p.csv", dtype=str)
    assert sorted(predictions["image_id"]) == ["'=HYPERLINK(evil)", "'@cmd", "-2", "plain"]
