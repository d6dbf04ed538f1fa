"""`chestxray predict` on real samples: folders, quoted globs, lists, every output format, a legible table at 80
columns, a closing summary, and one clear line (exit 1, no traceback) for each kind of damaged bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.labels import NIH14
from chestxray.models import build_model
from chestxray.models.bundle import save_bundle

THRESHOLDS = {name: (0.0 if name == "Effusion" else 1.0) for name in NIH14}  # every image positive for Effusion


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("predict-cli") / "bundle", build_model("cnn-tiny", num_labels=14), {
        "architecture": "cnn-tiny", "num_labels": 14, "in_chans": 1, "image_size": 32, "resize": "pad",
        "normalization": "gray", "labels": list(NIH14), "task": "multilabel", "thresholds": THRESHOLDS,
        "threshold_method": "youden on val"})


@pytest.fixture(scope="module")
def scans(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder tree of 6 real NIH images and 1 broken file, with long names."""
    root = tmp_path_factory.mktemp("scans")
    images = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[:6]
    for i, src in enumerate(images):
        dst = root / ("ward" if i < 3 else "ward/er") / f"patient-with-a-long-name-{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    (root / "ward" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def _run(*args: str, width: int = 80):
    return CliRunner().invoke(app, ["predict", *args], env={"COLUMNS": str(width)}, terminal_width=width)


def test_folder_and_quoted_glob_with_summary_and_80_column_table(bundle: Path, scans: Path) -> None:
    result = _run(str(bundle), str(scans / "ward"))
    assert result.exit_code == 0, result.output
    assert "6 image(s) scored, 1 quarantined; positives per finding: Effusion 6" in result.output
    assert "broken.png" in result.output
    assert all(len(line) <= 80 for line in result.output.splitlines() if "quarantined:" not in line)
    # 6 images do not fit a finding x image grid at 80 columns: one row per image with its positive findings
    assert "positive findings" in result.output and "Pleural_Thickening" not in result.output
    one = _run(str(bundle), str(scans / "ward" / "er" / "*.png"), "--batch-size", "2")
    assert one.exit_code == 0 and "3 image(s) scored, 0 quarantined" in one.output
    grid = _run(str(bundle), str(sorted((scans / "ward").glob("*long*"))[0]))
    assert "Pleural_Thickening" in grid.output and "Pneu…" not in grid.output  # one image: full grid, names whole
    assert "#1 = " in grid.output  # the long file name is numbered with a legend instead of cut


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_formats_on_stdout_and_file(bundle: Path, scans: Path, tmp_path: Path, fmt: str) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(scans.rglob("*.png"))) + f"\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / f"preds.{fmt}"
    result = CliRunner().invoke(app, ["predict", str(bundle), str(listing), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    if fmt == "csv":
        rows = pd.read_csv(out)
        assert len(rows) == 8 and (rows["status"] == "quarantined").sum() == 2
        assert rows.loc[rows["status"] == "ok", "pred_Effusion"].eq(1).all()
        assert "input file not found" in rows.loc[rows["path"].str.endswith("gone.png"), "reason"].item()
    else:
        records = json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
        assert len(records) == 8
        ok = [r for r in records if r["status"] == "ok"]
        assert len(ok) == 6 and all(r["positive"] == ["Effusion"] for r in ok)
        assert all(0 <= p <= 1 for r in ok for p in r["probabilities"].values())
        assert all(r["probabilities"] is None and r["reason"] for r in records if r["status"] != "ok")
    assert result.stdout == text  # stdout carries the same rows, pipe-clean: summary and reasons go to stderr
    assert "6 image(s) scored, 2 quarantined" in result.stderr


def test_nothing_readable_exits_1(bundle: Path, tmp_path: Path) -> None:
    result = _run(str(bundle), str(tmp_path / "nothing-*.png"))
    assert result.exit_code == 1 and "matched no input file" in result.output
    assert "none of the 1 input file(s) could be read" in result.output


def _damaged(bundle: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / how
    shutil.copytree(bundle, copy)
    weights, card = copy / "model.safetensors", copy / "card.json"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no-card":
        card.unlink()
    elif how == "other-architecture":
        card.write_text(card.read_text().replace('"cnn-tiny"', '"cnn-small"'))
    elif how == "other-label-count":
        fields = json.loads(card.read_text())
        fields.update(num_labels=2, labels=["NORMAL", "PNEUMONIA"], thresholds=None)  # else refused first
        card.write_text(json.dumps(fields))
    elif how == "garbage-card":
        card.write_text("{ not json")
    return copy


@pytest.mark.parametrize("how,message", [
    ("truncated", "not a readable safetensors file"),
    ("no-card", "not a model bundle (no card.json)"),
    ("other-architecture", "weights do not"),
    ("other-label-count", "weights do not fit architecture 'cnn-tiny' with 2 labels"),
    ("garbage-card", "card.json: not valid JSON"),
])
def test_damaged_bundle_one_line_exit_1(bundle: Path, scans: Path, tmp_path: Path, how: str, message: str) -> None:
    result = _run(str(_damaged(bundle, tmp_path, how)), str(scans))
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.startswith("error:") and result.output.count("error:") == 1


def test_file_name_that_is_not_utf8_is_scored_and_shown_escaped(bundle: Path, tmp_path: Path) -> None:
    """Issue 22: one such name used to kill predict with a UnicodeEncodeError traceback in every output format."""
    from tests.data import probes

    name = probes.non_utf8_name(tmp_path / "scans")
    for fmt in ("table", "csv", "json"):
        result = _run(str(bundle), str(tmp_path / "scans" / "PNEUMONIA"), "--format", fmt, "--out",
                      str(tmp_path / f"p.{fmt if fmt != 'table' else 'csv'}"), width=200)
        assert result.exit_code == 0, result.output
        shown = result.output.replace("\\\\", "\\")  # JSON writes the backslash escaped
        assert "bad\\xff" in shown and "4 image(s) scored, 0 quarantined" in result.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["path"].str.endswith("PNEUMONIA/bad\\xff.png").sum() == 1 and (table["status"] == "ok").all()
    assert name.endswith(b"bad\xff.png")
