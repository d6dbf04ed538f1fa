"""chestxray study --folds: 2 models x 2 folds on synthetic data -> per-fold runs, fold mean ± sd, a pooled
out-of-fold estimate over every image (checked against scikit-learn), pooled counts, paired comparison of the pools,
a report without sideways scrolling, and a re-run that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.shards import iter_split_samples, read_manifest
from tests.conftest import STUDY_FAST


@pytest.fixture(scope="module")
def kfold(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("kfold") / "cv"
    argv = ["study", str(synthetic_prepared), "--out", str(out), "--models", "cnn-tiny,cnn-small", "--folds", "2",
            *STUDY_FAST]
    result = CliRunner().invoke(app, argv, terminal_width=200)
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "argv": argv, "prepared": synthetic_prepared}


def test_per_fold_runs_and_a_pooled_estimate_over_every_image(kfold: dict) -> None:
    out = kfold["out"]
    runs = pd.read_csv(out / "study_runs.csv")
    assert sorted(runs["run"]) == ["cnn-small_seed0_fold0", "cnn-small_seed0_fold1", "cnn-tiny_seed0_fold0",
                                   "cnn-tiny_seed0_fold1"]
    assert sorted(runs["fold"].unique()) == [0, 1]
    source = read_manifest(kfold["prepared"])
    every = sorted(s["image_id"] for split in source["splits"] for s in iter_split_samples(kfold["prepared"], split))
    groups = pd.read_csv(out / "study_groups.csv").set_index("group")
    assert groups.index.tolist() == ["model=cnn-tiny", "model=cnn-small"] and (groups["folds"] == 2).all()
    for group, g in groups.iterrows():
        part = runs[runs["group"] == group]
        assert g["fold_auroc_mean"] == pytest.approx(part["test_auroc"].mean())
        assert g["fold_auroc_sd"] == pytest.approx(part["test_auroc"].std(ddof=1))
        pooled = pd.read_csv(Path(g["pooled_dir"]) / "eval" / "predictions.csv", dtype={"image_id": str})
        assert sorted(pooled["image_id"]) == every  # every image scored once, by the model that never saw it
        for fold, rows in pooled.groupby("fold"):
            run_dir = part.loc[part["fold"] == fold, "run_dir"].iloc[0]
            own = pd.read_csv(Path(run_dir) / "eval" / "predictions.csv", dtype={"image_id": str})
            assert sorted(rows["image_id"]) == sorted(own["image_id"])
        labels = json.loads((Path(g["pooled_dir"]) / "eval" / "metrics.json").read_text())["labels"]
        defined = [x for x in labels if 0 < pooled[x].sum() < len(pooled)]
        macro = np.mean([roc_auc_score(pooled[x], pooled[f"p_{x}"]) for x in defined])
        assert g["selected_test_auroc"] == pytest.approx(macro, abs=1e-9)  # independent check (scikit-learn)
        assert g["selected_test_low"] <= g["selected_test_auroc"] <= g["selected_test_high"]
        assert g["fn"] == part["fn"].sum() and g["fp"] == part["fp"].sum()  # counts pooled over the folds
        assert g["pooled_images"] == len(every) and g["estimate"].startswith("pooled out-of-fold")
    cmp = pd.read_csv(out / "study_comparisons.csv")
    assert len(cmp) == 1 and cmp["sentence"].iloc[0].startswith("model=cnn-tiny vs model=cnn-small: ")
    assert "pooled out-of-fold AUROC [95% CI]" in kfold["output"] and "fold mean ± sd" in kfold["output"]


def test_fold_runs_never_test_on_their_training_patients(kfold: dict) -> None:
    runs = pd.read_csv(kfold["out"] / "study_runs.csv")
    for run_dir in runs["run_dir"]:
        card = json.loads((Path(run_dir) / "bundle" / "card.json").read_text())
        prepared = card["prepared"]
        manifest = read_manifest(prepared)
        seen = {s["patient_id"] for split in ("train", "val") for s in iter_split_samples(prepared, split, manifest)}
        tested = pd.read_csv(Path(run_dir) / "eval" / "predictions.csv", dtype={"patient_id": str})["patient_id"]
        assert not seen & set(tested)


def test_kfold_report_has_no_sideways_scrolling_and_a_rerun_trains_nothing(kfold: dict) -> None:
    from selenium.webdriver.common.by import By

    from tests.report.test_run_report import _browser

    driver = _browser(1024, 800)
    try:
        driver.get((kfold["out"] / "study.html").resolve().as_uri())
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= viewport
        for table in driver.find_elements(By.CSS_SELECTOR, "table"):
            assert driver.execute_script("return arguments[0].getBoundingClientRect().right", table) <= viewport + 0.5
        cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#groups tbody tr:first-child td")]
        assert "±" in cells[3] and "folds pooled" in cells[4] and cells[6].startswith("[")
        assert "pooled out-of-fold" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
    before = {p: p.stat().st_mtime_ns for p in kfold["out"].glob("runs/*/bundle/model.safetensors")}
    result = CliRunner().invoke(app, kfold["argv"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in before} == before
