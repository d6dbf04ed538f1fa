"""chestxray study: 2 models x 2 seeds on synthetic data -> 4 run folders, one table, selection on validation only,
a re-run trains nothing, a killed study finishes only its missing runs; bad grids fail before any training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.errors import ConfigError
from chestxray.evaluation.statistics import CLUSTERED_TEST, holm
from chestxray.workflows import study as st
from tests.conftest import STUDY_ARGV as ARGV
from tests.conftest import STUDY_FAST as FAST


@pytest.fixture(scope="module")
def done(finished_study: dict) -> Path:
    return finished_study["out"]


def test_killed_study_finishes_only_missing_runs(finished_study: dict) -> None:
    k = finished_study
    everything = {"cnn-tiny_seed0", "cnn-tiny_seed1", "cnn-small_seed0", "cnn-small_seed1"}
    assert "cnn-tiny_seed0" in k["finished_before"] and len(k["finished_before"]) < 4  # killed mid-study
    assert sorted(k["trained"]) == sorted(everything - set(k["finished_before"]))  # only the missing runs
    assert k["first"].stat().st_mtime_ns == k["stamp"]  # a finished run is left as it was
    assert "model=cnn-tiny vs model=cnn-small:" in k["output"]


def test_four_run_folders_one_table_and_a_report(done: Path) -> None:
    runs = pd.read_csv(done / "study_runs.csv")
    assert sorted(runs["run"]) == ["cnn-small_seed0", "cnn-small_seed1", "cnn-tiny_seed0", "cnn-tiny_seed1"]
    for run in runs["run_dir"]:
        for name in ("bundle/card.json", "history.csv", "eval/metrics.json", "eval/predictions.csv", "study_row.json",
                     "report.html"):
            assert (Path(run) / name).is_file(), (run, name)
        card = json.loads((Path(run) / "bundle" / "card.json").read_text())
        assert card["thresholds"] and card["threshold_method"] == "youden on val"  # chosen on validation
    groups = pd.read_csv(done / "study_groups.csv")
    assert groups["group"].tolist() == ["model=cnn-tiny", "model=cnn-small"] and (groups["runs"] == 2).all()
    for g in groups.to_dict("records"):
        part = runs[runs["group"] == g["group"]]
        assert g["test_auroc_mean"] == pytest.approx(part["test_auroc"].mean())
        assert g["val_auroc_sd"] == pytest.approx(part["val_auroc"].std(ddof=1))
        assert g["selected_test_low"] <= g["selected_test_auroc"] <= g["selected_test_high"]
        assert g["parameters"] > 0 and g["images_per_s_mean"] > 0 and g["fn"] >= 0
    cmp = pd.read_csv(done / "study_comparisons.csv")
    assert len(cmp) == 1 and cmp["sentence"].iloc[0].startswith("model=cnn-tiny vs model=cnn-small: ")
    per_finding = pd.read_csv(done / "study_comparisons_findings.csv")
    findings = per_finding[~per_finding["finding"].isin(["macro", "macro_eligible"])]
    assert per_finding["finding"].iloc[len(findings)] == "macro" and (per_finding["a"] == "model=cnn-tiny").all()
    assert (findings["test"].isin([CLUSTERED_TEST, "AUROC undefined (one class only)"])
            | findings["test"].str.startswith("too few")).all() and (findings["test"] == CLUSTERED_TEST).any()
    tested = findings["p"].notna()
    assert (findings.loc[tested, "p_holm_study"] >= findings.loc[tested, "p_holm"] - 1e-12).all()
    assert findings.loc[~tested, "p_holm_study"].isna().all() and "p_holm_study" in findings["family"].iloc[0]
    assert cmp["p_holm_pairs"].iloc[0] == pytest.approx(cmp["p"].iloc[0]) or np.isnan(cmp["p"].iloc[0])
    history = pd.read_csv(Path(runs["run_dir"].iloc[0]) / "history.csv")
    assert {"train_accuracy", "val_accuracy"} <= set(history.columns)
    assert (done / "study.html").is_file()


def test_selection_uses_validation_only(done: Path) -> None:
    runs = pd.read_csv(done / "study_runs.csv")
    chosen = st.select_runs(runs, "val_auroc")
    for group, row in chosen.iterrows():
        part = runs[runs["group"] == group]
        assert row["val_auroc"] == part["val_auroc"].max()
    shuffled = runs.copy()
    for col in ("test_auroc", "test_auroc_low", "test_auroc_high", "sensitivity", "specificity", "fn", "fp"):
        shuffled[col] = shuffled[col].sample(frac=1, random_state=3).to_numpy()[::-1]  # test numbers scrambled
    assert st.select_runs(shuffled, "val_auroc")["run"].tolist() == chosen["run"].tolist()
    by_loss = st.select_runs(runs, "val_loss")
    for group, row in by_loss.iterrows():
        assert row["val_loss"] == runs[runs["group"] == group]["val_loss"].min()


def test_rerun_trains_nothing(done: Path, synthetic_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import chestxray.evaluation.evaluate as evaluate
    import chestxray.training.train as training

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(training, "train", refuse)
    monkeypatch.setattr(evaluate, "evaluate_run", refuse)
    before = {p: p.stat().st_mtime_ns for p in done.glob("runs/*/bundle/model.safetensors")}
    result = CliRunner().invoke(app, ["study", str(synthetic_prepared), "--out", str(done), *ARGV])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in done.glob("runs/*/bundle/model.safetensors")} == before


@pytest.mark.parametrize("argv,message", [
    (["--set", "lrr=0.1"], r"unknown setting 'lrr' \(did you mean 'lr'\?\)"),
    (["--models", ""], r"not one of|Unknown model|unknown model"),
    (["--set", "epochs="], r"is not a valid int|cannot be empty"),
    (["--recipes", "frozen", "--models", "cnn-tiny"], r"recipe 'frozen' needs pretrained weights, but model "
                                                       r"'cnn-tiny' has none"),
    (["--recipes", "finetuned"], r"unknown recipe 'finetuned' \(did you mean 'finetune'\?\)"),
    (["--set", "lr=" + ",".join(str(i) for i in range(1, 30)), "--seeds", ",".join(str(i) for i in range(8))],
     r"the grid makes 232 runs \(more than 200\).*--yes"),
    (["--select", "test_auroc"], r"--select 'test_auroc' is not one of"),
])
def test_bad_grids_fail_before_training(synthetic_prepared: Path, tmp_path: Path, argv: list[str],
                                        message: str) -> None:
    result = CliRunner().invoke(app, ["study", str(synthetic_prepared), "--out", str(tmp_path / "s"), "--no-mlflow",
                                      *argv])
    assert result.exit_code == 1, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "s" / "runs").exists()  # nothing trained


def test_empty_list_in_a_grid_file(tmp_path: Path, synthetic_prepared: Path) -> None:
    (tmp_path / "grid.yaml").write_text("models: []\nseeds: [0]\n")
    with pytest.raises(ConfigError, match=r"grid.yaml: 'models' is an empty list"):
        st.normalise_grid(st.read_grid(tmp_path / "grid.yaml"), str(tmp_path / "grid.yaml"))
    (tmp_path / "grid.yaml").write_text("models: [cnn-tiny]\naugment: [minimal, advanced]\nseeds: [0, 1, 2]\n"
                                        "epochs: 2\n")
    spec = st.expand(synthetic_prepared, st.normalise_grid(st.read_grid(tmp_path / "grid.yaml")), tmp_path / "o")
    assert len(spec.runs) == 6 and {r.group for r in spec.runs} == {"augment=minimal", "augment=advanced"}
    assert all(r.config.epochs == 2 for r in spec.runs)


def test_mlflow_parent_run_with_a_child_per_run(synthetic_prepared: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from chestxray.training.train import _allow_file_store

    uri = (tmp_path / "mlruns").as_uri()
    argv = ["study", str(synthetic_prepared), "--models", "cnn-tiny", "--out", str(tmp_path / "s"),
            "--set", "max_steps=2", "--set", "batch_size=32", "--set", "num_workers=0", "--set", f"mlflow_uri={uri}",
            "--n-boot", "20"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    parent = json.loads((tmp_path / "s" / "study.json").read_text())["mlflow_parent_run_id"]
    with _allow_file_store(uri):
        client = MlflowClient(uri)
        for name in ("cnn-tiny_seed0",):
            child = json.loads((tmp_path / "s" / "runs" / name / "run.json").read_text())["mlflow_run_id"]
            assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
        assert client.get_run(parent).data.params["select"] == "val_auroc"
    assert CliRunner().invoke(app, argv).exit_code == 0  # a re-run keeps the same parent
    assert json.loads((tmp_path / "s" / "study.json").read_text())["mlflow_parent_run_id"] == parent


def _evaluated(run: Path, labels: list[str], y: np.ndarray, scores: np.ndarray) -> Path:
    """A run folder holding only what compare-runs reads (eval/predictions.csv and metrics.json)."""
    (run / "eval").mkdir(parents=True)
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(y))], "patient_id": [f"p{k // 2}" for k in
                                                                                       range(len(y))]})
    frame[labels] = y
    frame[[f"p_{x}" for x in labels]] = scores
    frame.to_csv(run / "eval" / "predictions.csv", index=False)
    (run / "eval" / "metrics.json").write_text(json.dumps({"labels": labels, "split": "test"}))
    return run


def test_comparisons_are_corrected_across_pairs_and_say_which_family(tmp_path: Path) -> None:
    """Three groups make three pairs: the headline p gets Holm over the three pairs (p_holm_pairs, in the sentence),
    each finding gets Holm over its pair (p_holm) and over every finding of every pair (p_holm_study); a finding
    short of patients is in no family."""
    rng = np.random.default_rng(0)
    labels = ["a", "b", "rare"]
    y = (rng.random((400, 3)) < 0.3).astype(np.uint8)
    y[:, 2] = 0
    y[:6, 2] = 1  # 3 positive patients
    noise = rng.normal(size=y.shape)
    runs = {}
    for name, signal in (("g1", 2.0), ("g2", 1.6), ("g3", 1.5)):
        score = 1 / (1 + np.exp(-(noise + rng.normal(scale=0.8, size=y.shape) + signal * y)))
        runs[name] = str(_evaluated(tmp_path / name, labels, y, score))
    chosen = pd.DataFrame({"run": list(runs), "run_dir": list(runs.values())}, index=list(runs))
    table, per_finding = st.compare_groups(chosen, n_boot=50)
    assert list(zip(table["a"], table["b"])) == [("g1", "g2"), ("g1", "g3"), ("g2", "g3")]
    assert (table["finding"] == "macro_eligible").all()  # 'rare' keeps the all-findings macro from a test
    assert table["p_holm_pairs"].tolist() == pytest.approx(holm(table["p"].tolist()))
    assert (table["family"] == "Holm over the 3 pairwise headline tests of this study").all()
    for sentence, p_pairs in zip(table["sentence"], table["p_holm_pairs"]):
        assert sentence.startswith("g") and "(Obuchowski, patients as clusters), Holm-adjusted over 3 pairs p" in \
            sentence
    findings = per_finding[per_finding["finding"].isin(labels)]
    tested = findings["p"].notna()
    assert tested.sum() == 6 and findings.loc[findings["finding"] == "rare", "p_holm_study"].isna().all()
    assert findings.loc[tested, "p_holm_study"].tolist() == pytest.approx(holm(findings.loc[tested, "p"].tolist()))
    assert (findings.loc[tested, "p_holm_study"] >= findings.loc[tested, "p_holm"] - 1e-12).all()
    assert table["findings_p_holm_study_below_0.05"].tolist() == [
        int(((findings["a"] == a) & (findings["b"] == b) & (findings["p_holm_study"] < 0.05)).sum())
        for a, b in zip(table["a"], table["b"])]
