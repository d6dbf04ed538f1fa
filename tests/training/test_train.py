"""train(): real short runs (synthetic, Kaggle), the run folder, YAML + flags, MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from chestxray.errors import ConfigError
from chestxray.models.bundle import load_bundle
from chestxray.training.callbacks import METRIC_COLUMNS
from chestxray.training.config import resolve_config
from chestxray.training.train import train


def test_synthetic_two_epochs_learn_and_fill_run_folder(tmp_path: Path, synthetic_prepared: Path) -> None:
    config = resolve_config(prepared=str(synthetic_prepared), model="cnn-small", epochs=2, batch_size=8, lr=3e-3,
                            augment="none", num_workers=0, mlflow=False, progress=False, out=str(tmp_path / "run"))
    result = train(config)
    assert result.best_val_auroc > 0.9, result
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "metrics.csv", "history.csv", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "bundle/card.json", "bundle/model.safetensors"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text()) == config.to_dict() | {"out": str(run)}
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["train_loss"].notna().sum() == result.steps and metrics["val_auroc"].notna().sum() == 2
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1] and history["val_auroc"].max() == pytest.approx(result.best_val_auroc)
    for column in ("train_accuracy", "val_accuracy"):  # per epoch, at 0.5, mean over the 14 labels
        assert history[column].between(0, 1).all() and history[column].notna().all(), column
    manifest = json.loads((synthetic_prepared / "manifest.json").read_text())
    bundle = load_bundle(run)
    card = bundle.card
    assert card["prepared"] == str(synthetic_prepared.resolve()) and card["data_fingerprint"] == manifest["fingerprint"]
    assert (card["image_size"], card["normalization"], card["in_chans"], card["seed"]) == (32, "gray", 1, 0)
    assert card["labels"] == manifest["labels"] and card["task"] == manifest["task"]
    from chestxray.training.precision import choose_precision

    auto = choose_precision("auto", "auto")
    assert (card["precision"], card["precision_reason"]) == (auto.precision, auto.reason)
    assert json.loads((run / "run.json").read_text())["precision_reason"] == auto.reason
    assert card["preprocessing"]["resize"] == manifest["resize"] == "stretch"  # prepare's default
    assert card["preprocessing"]["interpolation"] == manifest["settings"]["interpolation"]
    with pytest.raises(ConfigError, match="will not be overwritten.*--resume .*another --out.*delete"):
        train(config)


def test_cli_train_yaml_flags_and_mlflow(tmp_path: Path, synthetic_prepared: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from chestxray.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "cfg.yaml").write_text("model: cnn-tiny\nepochs: 5\nbatch_size: 16\nnum_workers: 0\nmax_steps: 30\n"
                                       "loss: focal\npos_weight: true\nscheduler: plateau\n")
    result = CliRunner().invoke(app, ["train", str(synthetic_prepared), "-c", "cfg.yaml", "--epochs", "1",
                                      "--out", "runs/r1", "--no-progress", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "runs/r1" in result.output
    saved = yaml.safe_load((tmp_path / "runs/r1/config.yaml").read_text())
    assert (saved["model"], saved["epochs"], saved["max_steps"], saved["seed"], saved["loss"]) == \
        ("cnn-tiny", 1, 30, 3, "focal")
    run_info = json.loads((tmp_path / "runs/r1/run.json").read_text())
    # the default store is the SQLite file beside the run folder, not a ./mlruns in the working folder
    uri = run_info["mlflow_tracking_uri"]
    assert uri == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}" and not (tmp_path / "mlruns").exists()
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    mlrun = MlflowClient(uri).get_run(run_info["mlflow_run_id"])
    assert mlrun.data.params["lr"] == "0.0001"
    assert "train_loss_step" in mlrun.data.metrics and "val_auroc" in mlrun.data.metrics
    artifacts = Path(urlparse(mlrun.info.artifact_uri).path)
    assert artifacts.is_relative_to((tmp_path / "runs").resolve())
    for artifact in ("config.yaml", "metrics.csv", "history.csv", "bundle/card.json", "bundle/model.safetensors"):
        assert (artifacts / artifact).is_file(), artifact
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the file-store opt-in lasts only while training runs


def test_kaggle_real_images_beat_chance(tmp_path: Path, shared_data: Path) -> None:
    from chestxray.data.prepare import prepare_dataset
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    catalog = assign_splits(read_folder(shared_data / "kaggle-chest-xray-pneumonia"), (0.7, 0.15, 0.15), seed=0)
    prepare_dataset(catalog, tmp_path / "prep", size=64, workers=2)
    config = resolve_config(prepared=str(tmp_path / "prep"), model="cnn-small", epochs=2, batch_size=16, lr=2e-3,
                            augment="minimal", num_workers=0, mlflow=False, progress=False,
                            out=str(tmp_path / "run"))
    result = train(config)
    print(f"kaggle 64 px cnn-small 2 epochs: best val AUROC {result.best_val_auroc:.4f}")
    assert result.best_val_auroc > 0.8


def test_failed_start_folder_is_reused_and_a_second_writer_is_refused(tmp_path: Path, synthetic_prepared: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import lightning as L

    from chestxray.locks import folder_lock

    class FailAtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            raise RuntimeError("out of memory (simulated)")

    run = tmp_path / "run"
    config = resolve_config(prepared=str(synthetic_prepared), model="cnn-tiny", epochs=1, max_steps=2, batch_size=8,
                            num_workers=0, mlflow=False, progress=False, out=str(run))
    with pytest.raises(RuntimeError, match="simulated"):
        train(config, callbacks=[FailAtStart()])
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt.*without --resume \\(the folder is reused\\)"):
        train(config, resume=True)
    with folder_lock(run, "train"):
        with pytest.raises(ConfigError, match=f"{run}: in use by pid {os.getpid()} on host .*chestxray train"):
            train(config)
    result = train(config)  # a plain re-run with the same --out
    assert result.steps == 2 and (run / "checkpoints" / "last.ckpt").is_file()
    assert "reusing this folder: the run there stopped before its first checkpoint" in caplog.text
    with pytest.raises(ConfigError, match="will not be overwritten"):
        train(config)


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path: Path, synthetic_prepared: Path) -> None:
    import signal

    import lightning as L

    from chestxray.errors import TrainingInterrupted

    class CtrlC(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    run = tmp_path / "run"
    config = resolve_config(prepared=str(synthetic_prepared), model="cnn-tiny", epochs=2, batch_size=64,
                            num_workers=0, mlflow=False, progress=False, out=str(run))
    with pytest.raises(TrainingInterrupted, match=rf"interrupted during epoch 2; .*last.ckpt holds the state after "
                                                  rf"epoch 1 .*continue with: chestxray train --resume {run}"):
        train(config, callbacks=[CtrlC()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards
    assert not (run / "bundle").exists()
    result = train(config, resume=True)
    assert result.bundle_dir is not None and len(pd.read_csv(run / "history.csv")) == 2
    # resuming a finished run would train nothing: it says so, and how to extend it
    with pytest.raises(ConfigError, match=r"already finished \(--epochs 2 reached after 2 whole epoch\(s\).*nothing to "
                                          r"train.*--resume .* --epochs 3 or more"):
        train(config, resume=True)
