"""`chestxray audit RUN` on a run trained and evaluated in the test: files, page, report section, clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn-tiny trained one epoch on synthetic NIH-layout data (sex, age, view in its saved catalog), evaluated."""
    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits
    from chestxray.data.synth import make_synthetic
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.training.config import TrainConfig
    from chestxray.training.train import train

    root = tmp_path_factory.mktemp("audit-run")
    source = make_synthetic(root / "source", n=400, size=48, seed=0, findings_p=0.25)
    catalog = save_catalog(assign_splits(read_nih(source / "labels.csv", source / "images"), (0.5, 0.2, 0.3), seed=0),
                           root / "catalog")
    prepare_dataset(catalog, root / "prepared", size=32, workers=0)
    config = TrainConfig(prepared=str(root / "prepared"), model="cnn-tiny", epochs=1, batch_size=32, lr=3e-3,
                         num_workers=0, out=str(root / "run"), mlflow=False, progress=False, accelerator="cpu",
                         patience=0)
    train(config)
    evaluate_run(root / "run", n_boot=20, batch_size=128)
    return root / "run"


def test_cli_audit_writes_table_page_and_report_section(evaluated_run: Path) -> None:
    result = CliRunner().invoke(app, ["audit", str(evaluated_run), "--n-boot", "100", "--no-shortcuts"])
    assert result.exit_code == 0, result.output
    assert "any finding by subgroup" in result.output and "comparisons tested" in result.output
    out = evaluated_run / "audit"
    table = pd.read_csv(out / "subgroups.csv")
    assert set(table["attribute"]) == {"sex", "age", "view"}  # NIH-layout catalog: Patient Gender, Age, View
    assert set(table.loc[table["attribute"] == "sex", "subgroup"]) == {"F", "M"}
    assert set(table.loc[table["attribute"] == "age", "subgroup"]) <= {"0-20", "20-40", "40-60", "60-80", "80+"}
    assert (table.groupby(["attribute", "subgroup"]).size() == 15).all()  # 14 findings + any finding
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert 'id="audit-table"' in page and "Seyyed-Kalantari" in page and "data:image/png;base64," in page
    report = CliRunner().invoke(app, ["report", str(evaluated_run)])
    assert report.exit_code == 0, report.output
    html = (evaluated_run / "report.html").read_text(encoding="utf-8")
    assert '<section id="audit">' in html and 'id="plot-subgroups"' in html and 'href="#audit"' in html


def test_cli_audit_by_a_named_column_and_clear_errors(evaluated_run: Path, tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["audit", str(evaluated_run), "--by", "View Position", "--no-shortcuts",
                                  "--n-boot", "60", "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert set(pd.read_csv(tmp_path / "a" / "subgroups.csv")["attribute"]) == {"view"}  # NIH's name for it
    bad = CliRunner().invoke(app, ["audit", str(evaluated_run), "--by", "ward", "--no-shortcuts"])
    assert bad.exit_code == 1 and "no catalog column for attribute 'ward'" in bad.output and "--keep-cols" in bad.output
    assert "p_Mass" not in bad.output  # scores and labels are not offered as attributes
    assert "Traceback" not in bad.output
    split = CliRunner().invoke(app, ["audit", str(evaluated_run), "--split", "train", "--no-shortcuts"])
    assert split.exit_code == 1 and "chestxray evaluate" in split.output and "--split train" in split.output


def test_report_without_audit_says_how_to_make_one(tmp_path: Path) -> None:
    from chestxray.report.audit_report import render_audit_section

    html = render_audit_section(tmp_path / "nothing", "runs/x")
    assert "Not audited yet" in html and "chestxray audit runs/x" in html
