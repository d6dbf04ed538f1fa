"""Evaluation of a real (tiny) run: synthetic NIH-layout data -> catalog -> prepared shards -> bundle -> eval/."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.labels import NIH14
from chestxray.data.tasks import log_odds_of
from chestxray.data.prepare import prepare_dataset
from chestxray.data.sources.nih import read_nih
from chestxray.data.split import assign_splits
from chestxray.data.synth import make_synthetic
from chestxray.evaluation.evaluate import PLOTS, evaluate_run
from chestxray.evaluation.thresholds import as_probabilities, thresholds_from_frame
from chestxray.models import build_model
from chestxray.models.bundle import read_card, save_bundle

N_BOOT = 40


def _make_run(root: Path, prepared: Path, state: dict[str, torch.Tensor]) -> Path:
    """A run folder as training leaves it: bundle (cnn-tiny, fixed weights), metrics.csv and config.yaml."""
    net = build_model("cnn-tiny", num_labels=14)
    net.load_state_dict(state)
    run = root
    save_bundle(run / "bundle", net, {
        "architecture": "cnn-tiny", "num_labels": 14, "in_chans": 1, "image_size": 32, "resize": "crop",
        "normalization": "gray", "labels": list(NIH14), "task": "multilabel", "prepared": str(prepared),
        "thresholds": None, "seed": 0, "metrics": {"val_auroc": 0.67},  # a card from before metrics.training
    })
    steps = np.arange(0, 40, 5)
    pd.DataFrame({
        "step": steps, "epoch": steps // 20, "train_loss": 0.7 - steps / 100,
        "val_loss": np.where(steps % 20 == 15, 0.8 - steps / 200, np.nan),
        "val_auroc": np.where(steps % 20 == 15, 0.5 + steps / 200, np.nan), "lr": 1e-3,
    }).to_csv(run / "metrics.csv", index=False)
    pd.DataFrame({"epoch": [0, 1], "step": [15, 35], "train_loss": [0.6, 0.5], "val_loss": [0.72, 0.63],
                  "val_auroc": [0.57, 0.67], "lr": [1e-3, 5e-4]}).to_csv(run / "history.csv", index=False)
    (run / "config.yaml").write_text("model: cnn-tiny\nbatch_size: 8\n")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs with the same weights: one on the real prepared data, one whose TEST labels were shuffled."""
    root = tmp_path_factory.mktemp("eval")
    src = make_synthetic(root / "synth", n=80, size=32, seed=0, findings_p=0.35)
    catalog = assign_splits(read_nih(src / "labels.csv", src / "images"), ratios=(0.5, 0.25, 0.25), seed=0)
    prepare_dataset(catalog, root / "prepared", size=32, resize="crop", workers=0)
    table = catalog.table.copy()
    test = (table["split"] == "test").to_numpy()
    labels = list(catalog.labels)
    rng = np.random.default_rng(1)
    table.loc[test, labels] = table.loc[test, labels].to_numpy()[rng.permutation(int(test.sum()))]
    prepare_dataset(dataclasses.replace(catalog, table=table), root / "prepared_shuffled", size=32, resize="crop",
                    workers=0)
    torch.manual_seed(0)
    state = build_model("cnn-tiny", num_labels=14).state_dict()
    run_a = _make_run(root / "run_a", root / "prepared", state)
    run_b = _make_run(root / "run_b", root / "prepared_shuffled", state)
    return run_a, run_b


def test_cli_evaluate_writes_every_output(runs: tuple[Path, Path]) -> None:
    run = runs[0]
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", str(N_BOOT), "--tta", "hflip"])
    assert result.exit_code == 0, result.output
    assert "macro AUROC" in result.output and "normal" in result.output and "FN" in result.output
    out = run / "eval"
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns[:2]) == ["image_id", "patient_id"]
    assert all(name in pred and f"p_{name}" in pred for name in NIH14)
    manifest = json.loads((run.parent / "prepared" / "manifest.json").read_text())
    assert len(pred) == manifest["splits"]["test"]["count"]
    assert pred[[f"p_{x}" for x in NIH14]].stack().between(0, 1).all()
    for name in NIH14:
        roc = pd.read_csv(out / "roc" / f"{name}.csv")
        assert list(roc.columns) == ["fpr", "tpr", "threshold", "threshold_logit"]
        logit = roc["threshold_logit"].to_numpy(dtype=float)  # roc_curve's first threshold is +inf
        assert np.allclose(roc["threshold"].to_numpy(dtype=float), 1 / (1 + np.exp(-logit)))
        assert roc.empty == (pred[name].nunique() < 2)  # curves only where both classes exist
    summary = pd.read_csv(out / "summary.csv")
    assert summary["finding"].tolist() == [*NIH14, "macro", "micro", "normal"]
    metrics = json.loads((out / "metrics.json").read_text())  # json.loads rejects nothing, so check NaN text
    assert "NaN" not in (out / "metrics.json").read_text()
    assert metrics["split"] == "test" and metrics["tta"] == "hflip" and metrics["threshold_method"] == "youden on val"
    assert metrics["bootstrap"]["replicates"] == N_BOOT and metrics["bootstrap"]["unit"] == "patient"
    empty = [r for r in metrics["rows"] if r["kind"] == "finding" and r["positives"] == 0]
    assert empty and all(r["auroc"]["value"] is None and "no positives" in r["auroc"]["reason"] for r in empty)
    assert pd.read_csv(out / "training_metrics.csv").equals(pd.read_csv(run / "metrics.csv"))
    assert pd.read_csv(out / "training_history.csv").equals(pd.read_csv(run / "history.csv"))
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    card = read_card(run / "bundle")
    assert card["threshold_method"] == "youden on val" and card["threshold_tta"] == "hflip"  # thresholds keep their TTA
    assert card["threshold_logits"] == thresholds_from_frame(pd.read_csv(out / "val_predictions.csv"), NIH14, "youden")
    evaluation, training = card["metrics"]["evaluation"], card["metrics"]["training"]
    assert evaluation["split"] == "test" and evaluation["tta"] == "hflip" and evaluation["date"]
    assert training == {"split": "val", "val_auroc": 0.67}  # training's figure (old card layout) survives evaluate


def test_thresholds_ignore_test_labels(runs: tuple[Path, Path]) -> None:
    """Shuffling the TEST labels changes the test metrics but not the stored thresholds (chosen on val only)."""
    run_a, run_b = runs
    a = evaluate_run(run_a, n_boot=N_BOOT)
    b = evaluate_run(run_b, n_boot=N_BOOT)
    card_a, card_b = read_card(run_a / "bundle"), read_card(run_b / "bundle")
    assert card_b["threshold_logits"] == card_a["threshold_logits"] == a.thresholds  # log-odds, as applied
    assert card_b["thresholds"] == card_a["thresholds"] == as_probabilities(a.thresholds)
    pa, pb = (pd.read_csv(r / "eval" / "predictions.csv") for r in runs)
    assert np.allclose(pa[[f"p_{x}" for x in NIH14]], pb[[f"p_{x}" for x in NIH14]])  # same images, same scores
    assert not pa[list(NIH14)].equals(pb[list(NIH14)])  # ... but shuffled truth
    assert a.summary.to_frame()["auroc"].fillna(-1).tolist() != b.summary.to_frame()["auroc"].fillna(-1).tolist()


def test_verify_checksums_names_an_altered_shard_before_evaluating(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A shard altered in place keeps its size: only --verify-checksums finds it, and nothing is written."""
    run_a, _ = runs
    prepared = tmp_path / "prepared"
    shutil.copytree(run_a.parent / "prepared", prepared)
    shard = sorted(prepared.rglob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = sorted(p.name for p in run_a.iterdir())
    result = CliRunner().invoke(app, ["evaluate", str(run_a), "--prepared", str(prepared), "--verify-checksums"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert shard.name in result.output and "chestxray prepare" in result.output
    assert sorted(p.name for p in run_a.iterdir()) == before


def test_evaluate_rejects_a_folder_without_bundle(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1
    assert "no bundle/ folder" in result.output
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--threshold-method", "best"])
    assert result.exit_code == 1
    assert "unknown threshold method 'best'" in result.output
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--tta", "rotate"])
    assert result.exit_code == 1 and "unknown test-time augmentation 'rotate'" in result.output


def test_binary_task_has_one_row_and_fn_fp_counts(tmp_path: Path) -> None:
    """The Kaggle NORMAL/PNEUMONIA task is just a one-label schema: same code path, no macro/normal rows."""
    from chestxray.evaluation.evaluate import evaluate_predictions

    rng = np.random.default_rng(0)

    def frame(n: int) -> pd.DataFrame:
        y = (rng.random(n) < 0.6).astype(np.uint8)
        return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{k // 2}" for k in range(n)],
                             "PNEUMONIA": y, "p_PNEUMONIA": np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)})

    val, test = frame(60), frame(80)
    result = evaluate_predictions(val, test, ["PNEUMONIA"], tmp_path / "eval", threshold_method="sensitivity:0.9",
                                  n_boot=N_BOOT)
    assert [r.name for r in result.summary.rows] == ["PNEUMONIA"]
    row = result.summary.rows[0]
    t = result.thresholds["PNEUMONIA"]  # log-odds: the frames carry only p_, read through their log-odds
    pred = log_odds_of(test["p_PNEUMONIA"].to_numpy()) >= t
    assert row.counts.fn == int(((test["PNEUMONIA"] == 1) & ~pred).sum())
    assert row.counts.fp == int(((test["PNEUMONIA"] == 0) & pred).sum())
    val_sens = ((log_odds_of(val["p_PNEUMONIA"].to_numpy()) >= t) & (val["PNEUMONIA"] == 1)).sum() / val["PNEUMONIA"].sum()
    assert val_sens >= 0.9  # the target holds on validation, where the threshold was chosen
    assert result.macro_auroc == row.auroc.value
    assert (tmp_path / "eval" / "roc_curves.png").exists() and not (tmp_path / "eval" / "history.png").exists()


def test_evaluate_checks_preprocessing_and_names_other_data(runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Data prepared with another resize mode (or other pixel settings) is refused before any threshold is written;
    data that is merely not the training data is evaluated, with a note and same_data_as_training false."""
    import shutil

    from chestxray.data.shards import preprocessing, read_manifest
    from chestxray.models.bundle import update_card

    run_a, _ = runs
    prepared, shuffled = run_a.parent / "prepared", run_a.parent / "prepared_shuffled"
    run = tmp_path / "run"
    shutil.copytree(run_a / "bundle", run / "bundle")
    manifest = read_manifest(prepared)
    update_card(run / "bundle", thresholds=None, data_fingerprint=manifest["fingerprint"],
                preprocessing=preprocessing(manifest))
    assert preprocessing(manifest) == {"image_size": 32, "resize": "crop", "interpolation": manifest["settings"][
        "interpolation"], "storage": "raw uint8 .gray"}
    src = run_a.parent / "synth"
    catalog = assign_splits(read_nih(src / "labels.csv", src / "images"), ratios=(0.5, 0.25, 0.25), seed=0)
    prepare_dataset(catalog, tmp_path / "padded", size=32, resize="pad", workers=0)

    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "10", "--prepared", str(tmp_path / "padded")])
    assert result.exit_code == 1
    assert "prepared with --resize pad" in result.output and "trained on --resize crop" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 3
    assert read_card(run / "bundle")["thresholds"] is None and not (run / "eval").exists()

    update_card(run / "bundle", preprocessing={**preprocessing(manifest), "interpolation": "nearest"})
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "10", "--prepared", str(prepared)])
    assert result.exit_code == 1 and "interpolation: data" in result.output and "'nearest'" in result.output
    assert read_card(run / "bundle")["thresholds"] is None

    update_card(run / "bundle", preprocessing=preprocessing(manifest))
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "10", "--prepared", str(prepared)])
    assert result.exit_code == 0, result.output
    assert "not the data" not in result.output
    assert json.loads((run / "eval" / "metrics.json").read_text())["same_data_as_training"] is True
    card = (run / "bundle" / "card.json").read_bytes()
    before = (run / "eval" / "metrics.json").read_bytes()
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "10", "--prepared", str(shuffled)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{shuffled} is not the data" in text and "evaluated as external data" in text
    # issue 20: other data never re-chooses the run's thresholds nor rewrites its card or RUN/eval
    assert (run / "bundle" / "card.json").read_bytes() == card
    assert (run / "eval" / "metrics.json").read_bytes() == before
    external = json.loads((run / "external" / "prepared_shuffled-test" / "metrics.json").read_text())
    assert external["overlap"]["checked"] and external["overlap"]["identical_images"] == 0
    with pytest.raises(Exception, match="would overwrite the bundle's thresholds"):
        evaluate_run(run, prepared=shuffled, n_boot=10)
