"""OptunaPruning stops a run early but leaves a complete run folder; MlflowParent links the run to a parent."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import torch

from chestxray.training.config import TrainConfig
from chestxray.training.train import train
from chestxray.training.tuning import OptunaPruning


def test_pruned_run_stops_after_first_validation_with_complete_folder(synthetic_prepared: Path,
                                                                      tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.999))
        trial = study.ask()
        pruning = OptunaPruning(trial)
        config = TrainConfig(prepared=str(synthetic_prepared), model="cnn-tiny", epochs=3, batch_size=64,
                             num_workers=0, precision="32-true", mlflow=False, progress=False, out=str(tmp_path / "run"))
        result = train(config, callbacks=[pruning])
    finally:
        torch.set_num_threads(threads)
    assert pruning.pruned_at == 0 and result.epochs == 1  # ThresholdPruner: AUROC below 0.999 → stop at once
    assert list(study.trials[0].intermediate_values) == [0] and len(pruning.values) == 1
    assert (tmp_path / "run" / "bundle").is_dir()
    with open(tmp_path / "run" / "history.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 1
