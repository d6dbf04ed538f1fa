"""The cross-dataset matrix as a study: train on each source of a merged dataset (and on all), test on each."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app


@pytest.mark.slow
def test_cross_dataset_study_writes_the_matrix(merged_prepared: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("sources: [full, eff, nod, all]\nmodel: cnn-tiny\nepochs: 1\nbatch_size: 32\nlr: 3.0e-3\n"
                    "augment: none\nnum_workers: 0\n", encoding="utf-8")
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["study", str(merged_prepared), "--grid", str(grid), "--no-mlflow", "--n-boot",
                                      "20", "--out", str(out)], terminal_width=250)
    assert result.exit_code == 0, result.output
    matrix = pd.read_csv(out / "study_cross_source_Nodule.csv")  # the one finding every source annotates
    assert matrix["trained_on"].tolist() == ["full", "eff", "nod", "all"]
    for column in ("eff", "full", "nod", "all (pooled)"):
        assert column in matrix.columns
    assert (out / "study_cross_source_Nodule.png").stat().st_size > 0
    assert not (out / "study_cross_source_Cardiomegaly.csv").exists()  # annotated by 'full' only
    sources = pd.read_csv(out / "study_sources.csv")
    for row in matrix.itertuples():
        run = out / "runs" / row.run
        card = json.loads((run / "bundle" / "card.json").read_text())
        expected = [] if row.trained_on == "all" else [row.trained_on]
        assert sorted(card["sources"]["trained_on"]) == sorted(expected or ["eff", "full", "nod"])
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        nodule = next(r for r in metrics["by_source"]["nod"]["rows"] if r["name"] == "Nodule")
        value = sources[(sources["run"] == row.run) & (sources["test_source"] == "nod")
                        & (sources["finding"] == "Nodule")]["auroc"].item()
        assert value == pytest.approx(nodule["auroc"]["value"])
    assert "Cross-dataset matrix" in (out / "study.html").read_text()
    assert "test: nod" in result.output and "trained on" in result.output
