"""Extending a finished run (--resume with a larger --epochs / --max-steps): whole history, an LR that continues the
re-planned schedule, an exact continuation after a mid-epoch --max-steps stop, and only last.ckpt kept on disk."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import lightning as L
import mlflow
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from chestxray.errors import ConfigError
from chestxray.training.config import resolve_config
from chestxray.training.module import warmup_cosine
from chestxray.training.train import train

STEPS_PER_EPOCH = 7  # the synthetic set's ~420 training images, batch 64



def _train_count(prepared: Path) -> int:
    """Training images of the prepared set, from its manifest (the split deals patients by a hash, not a fixed 70 %)."""
    from chestxray.data.shards import read_manifest

    return int(read_manifest(prepared)["splits"]["train"]["count"])


def _config(prepared: Path, out: Path, **settings):
    base = dict(prepared=str(prepared), model="cnn-tiny", batch_size=64, lr=3e-3, augment="advanced", num_workers=0,
                mlflow=False, progress=False, out=str(out), patience=0)
    return resolve_config(**{**base, **settings})


class FirstLr(L.Callback):
    """The LR the first optimizer step of this fit uses, and the step it is."""

    def __init__(self) -> None:
        self.seen: tuple[int, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen is None:
            self.seen = (trainer.global_step, trainer.optimizers[0].param_groups[-1]["lr"])


class Weights(L.Callback):
    """A copy of the net's weights at each validation, by epoch."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.at[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.net.state_dict().items()}


def _fake_scores(monkeypatch: pytest.MonkeyPatch, scores: dict[int, float]) -> None:
    """The checkpoint callback sees val_auroc = scores[epoch], so which epoch is best is known in advance."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    real = ModelCheckpoint._monitor_candidates

    def fake(self, trainer):
        candidates = real(self, trainer)
        candidates["val_auroc"] = torch.tensor(scores[trainer.current_epoch])
        return candidates

    monkeypatch.setattr(ModelCheckpoint, "_monitor_candidates", fake)


def _files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _bundle_equals(run: Path, weights: dict[str, torch.Tensor]) -> bool:
    saved = load_file(run / "bundle" / "model.safetensors")
    return all(torch.equal(saved[k], v) for k, v in weights.items())


def test_extending_continues_the_schedule_keeps_one_checkpoint_and_the_best_bundle(
        tmp_path: Path, synthetic_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    first = _config(synthetic_prepared, run, epochs=2, warmup_fraction=0.2, augment="none", mlflow=True,
                    mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    _fake_scores(monkeypatch, {0: 0.9, 1: 0.6, 2: 0.7, 3: 0.95})
    weights = Weights()
    result = train(first, callbacks=[weights])
    assert _files(run) == ["last.ckpt"] and result.best_checkpoint is None  # best (epoch 1) is in the bundle
    assert _bundle_equals(run, weights.at[0]) and not _bundle_equals(run, weights.at[1])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["weights_from"] == "best.ckpt (epoch 1, step 7)"  # says where from, not a path that is gone

    probe = FirstLr()
    train(replace(first, epochs=3), resume=True, callbacks=[weights, probe])  # no better epoch: the bundle stays
    # the rule: warm-up kept as first planned (20 % of 14 steps = 2), cosine re-planned to end at 3 x 7 = 21 steps
    step, lr = probe.seen
    assert step == 14 and lr == pytest.approx(3e-3 * warmup_cosine(14, 2, 21), rel=1e-9)
    assert lr > 0.1 * 3e-3 and lr != pytest.approx(3e-3 * warmup_cosine(14, 4, 21))  # not 0, not back in warm-up
    assert _files(run) == ["last.ckpt"] and _bundle_equals(run, weights.at[0])
    assert json.loads((run / "bundle" / "card.json").read_text())["weights_from"].startswith("the earlier bundle")

    result = train(replace(first, epochs=4), resume=True, callbacks=[weights])  # a better last epoch
    assert _bundle_equals(run, weights.at[3]) and math.isclose(result.best_val_auroc, 0.95, rel_tol=1e-6)
    files = [run / "checkpoints" / name for name in _files(run)]
    assert len({os.stat(p).st_ino for p in files}) == 1  # best.ckpt, if there, is a hard link to last.ckpt
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3] and list(history["step"]) == [7, 14, 21, 28]
    assert (history["train_images"] == _train_count(synthetic_prepared)).all() and history["val_auroc"].notna().all()
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.loc[metrics["train_loss"].notna(), "step"]) == list(range(1, 29))  # every step once
    assert result.epochs == 4 and "epochs: 4" in (run / "config.yaml").read_text()
    # MLflow: the same run goes on (its params stay as first logged; the extension's values are tags)
    client = mlflow.MlflowClient(first.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(first.experiment).experiment_id])
    run_id = json.loads((run / "run.json").read_text())["mlflow_run_id"]
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].data.params["epochs"] == "2"
    assert runs[0].data.tags["resumed_with.epochs"] == "4"
    assert [m.step for m in client.get_metric_history(run_id, "val_auroc")] == [6, 13, 20, 27]
    with pytest.raises(ConfigError, match=r"--epochs 4 reached after 4 whole epoch\(s\), step 28.*--resume .* "
                                          r"--epochs 5 or more"):
        train(replace(first, epochs=4), resume=True)


def test_max_steps_stop_mid_epoch_then_extend_equals_an_unbroken_run(tmp_path: Path,
                                                                     synthetic_prepared: Path) -> None:
    # a constant LR (plateau, which never fires here) so the two runs follow the same schedule
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    config = _config(synthetic_prepared, stopped, epochs=2, scheduler="plateau", max_steps=10)
    train(config)
    assert list(pd.read_csv(stopped / "history.csv")["step"]) == [7, 10]  # epoch 2 stopped after 3 of its 7 steps
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    with pytest.raises(ConfigError, match=r"--max-steps 10 reached .*--max-steps 11 or more \(-1: no limit\)"):
        train(config, resume=True)
    train(replace(config, max_steps=-1), resume=True)
    train(replace(config, out=str(straight), max_steps=-1))
    a, b = pd.read_csv(straight / "history.csv"), pd.read_csv(stopped / "history.csv")
    assert list(b["epoch"]) == [0, 1] and list(b["train_images"]) == [_train_count(synthetic_prepared)] * 2
    for column in ("step", "train_loss", "val_loss", "val_auroc", "train_accuracy", "lr"):
        assert (a[column] - b[column]).abs().max() <= 1e-6, column
    final_a = load_file(straight / "bundle" / "model.safetensors")
    final_b = load_file(stopped / "bundle" / "model.safetensors")
    assert max((final_a[k] - final_b[k]).abs().max().item() for k in final_a) <= 1e-6
