"""A study on a multi-class task (Kaggle NORMAL / BACTERIA / VIRUS, 40 images per class at 32 px): the group table
and the paired comparison, whose headline is the macro one-vs-rest AUROC difference with a paired patient-bootstrap
CI, and per class Obuchowski's clustered test one-vs-rest with Holm (or the minimum-sample rule's words)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.evaluation.statistics import CLUSTERED_TEST
from tests.workflows.test_multiclass import CLASSES, _subset


@pytest.fixture(scope="module")
def study(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("multiclass-study")
    source = _subset(shared_data / "kaggle-chest-xray-pneumonia", root / "kaggle")
    for argv in (["catalog", "folder", source, "--kaggle-subtypes", "--ratios", "0.5,0.25,0.25", "--out",
                  root / "catalog"], ["prepare", root / "catalog", "--size", 32, "--workers", 1, "--out",
                                      root / "prepared"]):
        result = CliRunner().invoke(app, [str(a) for a in argv])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["study", str(root / "prepared"), "--models", "cnn-tiny,cnn-small", "--set",
                                      "epochs=2", "--set", "batch_size=16", "--set", "lr=3e-3", "--set",
                                      "augment=none", "--set", "num_workers=0", "--n-boot", "40", "--no-mlflow",
                                      "--out", str(root / "study")])
    assert result.exit_code == 0, result.output
    return root / "study", result.output


def test_multiclass_study_table_and_comparison(study: tuple[Path, str]) -> None:
    out, output = study
    groups = pd.read_csv(out / "study_groups.csv")
    assert groups["group"].tolist() == ["model=cnn-tiny", "model=cnn-small"]
    assert groups["selected_test_auroc"].between(0, 1).all()
    runs = pd.read_csv(out / "study_runs.csv")
    for run in runs.to_dict("records"):  # argmax errors: each one an FN of its class and an FP of the predicted one
        predictions = pd.read_csv(Path(run["run_dir"]) / "eval" / "predictions.csv")
        assert run["fn"] == run["fp"] and 0 < run["fn"] < len(predictions)
        assert 0 <= run["specificity"] <= 1 and 0 <= run["sensitivity"] <= 1
    findings = pd.read_csv(out / "study_comparisons_findings.csv")
    assert findings["finding"].tolist()[:4] == [*CLASSES, "macro"]  # one-vs-rest per class, then the macro
    per_class = findings.iloc[:3]
    tested = per_class["p"].notna()
    assert (per_class.loc[tested, "test"] == CLUSTERED_TEST).all()
    assert per_class.loc[~tested, "test"].str.startswith("too few").all()  # the minimum-sample rule's words
    assert per_class.loc[tested, "p_holm"].ge(per_class.loc[tested, "p"]).all()
    cmp = pd.read_csv(out / "study_comparisons.csv")
    assert len(cmp) == 1 and cmp["finding"].iloc[0] in ("macro", "macro_eligible")
    if pd.notna(cmp["p"].iloc[0]):
        assert cmp["sentence"].iloc[0].endswith("(Obuchowski, patients as clusters)")
        assert cmp["low"].iloc[0] <= cmp["diff"].iloc[0] <= cmp["high"].iloc[0]
    else:
        assert "too few patients" in cmp["sentence"].iloc[0]
    assert "model=cnn-tiny vs model=cnn-small" in output and (out / "study.html").is_file()
