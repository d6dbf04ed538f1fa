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


def test_cli_audit_shortcuts_rescore_through_the_one_scoring_path(evaluated_run: Path, tmp_path: Path) -> None:
    """With shortcuts on: the own-geometry re-render reproduces evaluate's scores, square synthetic images cannot
    change with the geometry, and the probe reports the catalog's view and sex."""
    import json

    result = CliRunner().invoke(app, ["audit", str(evaluated_run), "--n-boot", "60", "--max-images", "80",
                                      "--coverage-images", "12", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "s" / "audit.json").read_text(encoding="utf-8"))
    assert record["shortcut_images"] == 80 and record["scoring_parity"] < 1e-5
    counter = pd.read_csv(tmp_path / "s" / "counterfactual.csv")
    assert set(counter["geometry"]) == {"stretch -> crop", "stretch -> pad"} and (counter["changed"] == 0).all()
    assert {"view", "sex"} <= set(pd.read_csv(tmp_path / "s" / "probe.csv")["target"])
    strata = pd.read_csv(tmp_path / "s" / "shortcuts.csv")
    assert {"mean_intensity", "view"} <= set(strata["feature"]) and "width" not in set(strata["feature"])  # constant
    page = (tmp_path / "s" / "audit.html").read_text(encoding="utf-8")
    assert 'id="audit-shortcuts"' in page and 'id="audit-coverage"' in page
    coverage = pd.read_csv(tmp_path / "s" / "explain_coverage.csv").set_index("outcome")
    assert coverage.loc["all", "maps"] == 12 * 14  # 12 sampled test images x every label
    assert coverage.drop(index="all")["maps"].sum() == 12 * 14 and "empty gradcam maps" in record["coverage_text"]


def test_explain_and_report_state_the_coverage_of_the_maps(evaluated_run: Path) -> None:
    shown = CliRunner().invoke(app, ["explain", str(evaluated_run), "--split", "test", "--n", "4",
                                     "--outcomes", "TP,FN,TN"])
    assert shown.exit_code == 0, shown.output
    assert "empty gradcam maps (evidence for the finding):" in shown.output and "looked nowhere" in shown.output
    folder = evaluated_run / "explain" / "test-gradcam"
    scores = pd.read_csv(folder / "scores.csv")
    assert set(scores["map_shown"]) <= {"evidence for", "evidence against"}
    negative_empty = (scores["probability"] < scores["threshold"]) & (scores["for_map_empty"] == 1)
    assert (scores.loc[negative_empty, "map_shown"] == "evidence against").all()  # no grey square for negatives
    assert CliRunner().invoke(app, ["report", str(evaluated_run)]).exit_code == 0
    html = (evaluated_run / "report.html").read_text(encoding="utf-8")
    assert "Coverage: empty gradcam maps" in html and "looked nowhere" in html
