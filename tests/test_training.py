"""Training: LightningModule wiring (loss, metric), freezing, config errors, real short runs (synthetic, Kaggle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from chestxray.bundle import load_bundle
from chestxray.callbacks import METRIC_COLUMNS, FreezeBackbone
from chestxray.config import TrainConfig, resolve_config
from chestxray.errors import ConfigError, DataError, ModelError
from chestxray.models import build_model
from chestxray.training import ChestXrayModule, focal_loss, train, warmup_cosine


def _batches(n: int, labels: torch.Tensor, size: int = 16, batch: int = 4, seed: int = 0) -> list[dict]:
    """Batches in the DataModule's dict layout (image, labels, image_id, patient_id)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, size, size, generator=g)
    return [{"image": images[i:i + batch], "labels": labels[i:i + batch].float(),
             "image_id": [f"im{j}" for j in range(i, min(n, i + batch))],
             "patient_id": [f"p{j}" for j in range(i, min(n, i + batch))]} for i in range(0, n, batch)]


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


# ------------------------------------------------------------------ module wiring


def test_focal_loss_reduces_to_bce_and_downweights_easy_examples() -> None:
    logits, targets = torch.tensor([[3.0, -2.0], [0.1, 0.2]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0), bce)
    assert focal_loss(logits, targets, gamma=2.0) < bce


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine(s, warmup=4, total=20) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[12] == pytest.approx(0.5) and factors[20] == pytest.approx(0)


def test_val_auroc_skips_labels_without_both_classes() -> None:
    rng = np.random.default_rng(0)
    labels = torch.zeros(24, 3)
    labels[:, 1] = torch.from_numpy(rng.integers(0, 2, 24).astype(np.float32))
    labels[:, 2] = 1.0  # no negatives
    module = ChestXrayModule(build_model("cnn-tiny", 3), ["a", "b", "c"])
    out = _trainer().validate(module, dataloaders=DataLoader(_batches(24, labels), batch_size=None), verbose=False)
    module.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(module(b["image"])) for b in _batches(24, labels)])
    expected = roc_auc_score(labels[:, 1].numpy(), probs[:, 1].numpy())
    assert out[0]["val_auroc"] == pytest.approx(expected, abs=1e-5)
    assert "val_auroc_b" in out[0] and "val_auroc_a" not in out[0]
    assert np.isfinite(out[0]["val_loss"])


@pytest.mark.parametrize("unfreeze_last", [0, 1])
def test_freeze_backbone_trains_only_head(unfreeze_last: int) -> None:
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 2, (8, 2)).astype(np.float32))
    module = ChestXrayModule(build_model("cnn-small", 2), ["a", "b"], lr=1e-2, scheduler="plateau")
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = _trainer(max_steps=2, callbacks=[FreezeBackbone("cnn-small", unfreeze_last)], num_sanity_val_steps=0,
                       limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(_batches(8, labels), batch_size=None))
    after = module.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = [k for k in before if k.startswith("features.0.") or k.startswith("features.1.")]
    assert frozen and not changed & set(frozen)  # weights and BatchNorm statistics untouched
    assert "head.4.weight" in changed and "head.1.weight" in changed
    last_block = {k for k in before if k.startswith("features.2.") and "num_batches" not in k}
    assert (last_block <= changed) if unfreeze_last else not (last_block & changed)


# ------------------------------------------------------------------ config


def test_config_layers_and_validation(tmp_path: Path, synthetic_prepared: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("model: resnet18\nepochs: 5\nbatch-size: 4\n")
    config = resolve_config(tmp_path / "cfg.yaml", prepared=str(synthetic_prepared), epochs=2, lr=None)
    assert (config.model, config.epochs, config.batch_size, config.lr) == ("resnet18", 2, 4, TrainConfig.lr)
    with pytest.raises(ModelError, match=r"unknown model 'resnet81'.*did you mean 'resnet18'"):
        resolve_config(prepared=str(synthetic_prepared), model="resnet81")
    with pytest.raises(ConfigError, match="--lr must be a positive number, got -0.1"):
        resolve_config(prepared=str(synthetic_prepared), lr=-0.1)
    with pytest.raises(DataError, match="PREPARED folder .*nowhere does not exist"):
        resolve_config(prepared=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="--augment 'advance' .*did you mean 'advanced'"):
        resolve_config(prepared=str(synthetic_prepared), augment="advance")
    (tmp_path / "typo.yaml").write_text("ephocs: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'ephocs' .*did you mean 'epochs'"):
        resolve_config(tmp_path / "typo.yaml", prepared=str(synthetic_prepared))


@pytest.mark.parametrize("args, message", [
    (["--model", "densenet12"], "did you mean 'densenet121'"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_cli_bad_config_fails_before_training(tmp_path: Path, synthetic_prepared: Path, args: list[str],
                                              message: str) -> None:
    from chestxray.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(synthetic_prepared), "--out", str(out), "--no-mlflow", *args])
    assert result.exit_code == 1 and message in result.output
    assert not out.exists()
    missing = CliRunner().invoke(app, ["train", str(tmp_path / "absent"), "--model", "cnn-tiny", "--out", str(out)])
    assert missing.exit_code == 1 and "absent does not exist" in missing.output and not out.exists()


# ------------------------------------------------------------------ real runs


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
    manifest = json.loads((synthetic_prepared / "manifest.json").read_text())
    bundle = load_bundle(run)
    card = bundle.card
    assert card["prepared"] == str(synthetic_prepared.resolve()) and card["data_fingerprint"] == manifest["fingerprint"]
    assert (card["image_size"], card["normalization"], card["in_chans"], card["seed"]) == (32, "gray", 1, 0)
    assert card["labels"] == manifest["labels"] and card["task"] == manifest["task"]
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
    store = tmp_path / "mlruns"
    run_dirs = [p for p in store.glob("*/*") if (p / "meta.yaml").is_file() and p.name == run_info["mlflow_run_id"]]
    assert len(run_dirs) == 1
    mlrun = run_dirs[0]
    assert (mlrun / "params" / "lr").read_text() == "0.0001"
    assert (mlrun / "metrics" / "train_loss_step").is_file() and (mlrun / "metrics" / "val_auroc").is_file()
    for artifact in ("config.yaml", "metrics.csv", "history.csv", "bundle/card.json", "bundle/model.safetensors"):
        assert (mlrun / "artifacts" / artifact).is_file(), artifact
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the file-store opt-in lasts only while training runs


def test_kaggle_real_images_beat_chance(tmp_path: Path, shared_data: Path) -> None:
    from chestxray.prepare import prepare_dataset
    from chestxray.sources import read_folder
    from chestxray.split import assign_splits

    catalog = assign_splits(read_folder(shared_data / "kaggle-chest-xray-pneumonia"), (0.7, 0.15, 0.15), seed=0)
    prepare_dataset(catalog, tmp_path / "prep", size=64, workers=2)
    config = resolve_config(prepared=str(tmp_path / "prep"), model="cnn-small", epochs=2, batch_size=16, lr=2e-3,
                            augment="minimal", num_workers=0, mlflow=False, progress=False,
                            out=str(tmp_path / "run"))
    result = train(config)
    print(f"kaggle 64 px cnn-small 2 epochs: best val AUROC {result.best_val_auroc:.4f}")
    assert result.best_val_auroc > 0.8


def test_cli_compare_trains_each_model_on_same_data(tmp_path: Path, synthetic_prepared: Path) -> None:
    from chestxray.cli import app

    result = CliRunner().invoke(app, ["compare", str(synthetic_prepared), "--models", "cnn-tiny,cnn-small",
                                      "--epochs", "1", "--batch-size", "32", "--num-workers", "0", "--no-mlflow",
                                      "--no-progress", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert "cnn-tiny" in result.output and "cnn-small" in result.output and "images/s" in result.output
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert list(table["model"]) == ["cnn-tiny", "cnn-small"]
    assert table["parameters"].iloc[0] < table["parameters"].iloc[1]
    assert table["val_auroc"].between(0, 1).all() and (table["images_per_s"] > 0).all()
    configs = [yaml.safe_load((tmp_path / "cmp" / m / "config.yaml").read_text()) for m in table["model"]]
    assert configs[0] | {"model": None, "out": None} == configs[1] | {"model": None, "out": None}
    bad = CliRunner().invoke(app, ["compare", str(synthetic_prepared), "--models", "cnn-small,resnet19"])
    assert bad.exit_code == 1 and "did you mean 'resnet18'" in bad.output
