"""Lightning callbacks a tuning trial adds to train(): Optuna pruning on validation AUROC, and the MLflow link of
the trial's run to its study's parent run.

Why not optuna-integration's PyTorchLightningPruningCallback: it raises TrialPruned from inside Trainer.fit, so
train() never writes the pruned run's history.csv and bundle. OptunaPruning only asks the Trainer to stop; the run
folder is completed as for any run, and the caller raises TrialPruned afterwards (`pruned_at` says when).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from chestxray.errors import ConfigError

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Report `monitor` after every validation as trial.report(value, step=validation index); stop when pruned."""

    def __init__(self, trial: Any, monitor: str = "val_auroc") -> None:
        self.trial = trial
        self.monitor = monitor
        self.step = 0
        self.pruned_at: int | None = None  # the validation index at which the pruner stopped the run
        self.values: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ConfigError("a tuning trial runs in one process (devices 1); run more trials at once with "
                              "--workers N instead of --devices/--num-nodes")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        self.values.append(float(value))
        self.trial.report(float(value), step=self.step)
        if self.trial.should_prune():
            self.pruned_at = self.step
            trainer.should_stop = True
            log.info("trial %d pruned after validation %d (%s %.4f)", self.trial.number, self.step, self.monitor,
                     float(value))
        self.step += 1


class MlflowParent(Callback):
    """Tag the run's MLflow run as a child of the study's parent run (mlflow.parentRunId) plus `tags`."""

    def __init__(self, parent_run_id: str, tags: dict[str, str]) -> None:
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.run_id: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                self.run_id = logger.run_id
                client = logger.experiment
                client.set_tag(self.run_id, "mlflow.parentRunId", self.parent_run_id)
                for key, value in self.tags.items():
                    client.set_tag(self.run_id, key, value)
