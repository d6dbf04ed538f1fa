"""Train several architectures on the same prepared data with the same seed and tabulate how each did."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from chestxray.errors import ConfigError
from chestxray.files import write_csv
from chestxray.models import get_spec
from chestxray.training.config import TrainConfig, validate_config

log = logging.getLogger(__name__)

COLUMNS = ["model", "val_auroc", "seconds", "parameters", "images_per_s", "epochs", "steps", "run_dir"]


def compare_models(base: TrainConfig, models: list[str], out_dir: str | Path,
                   budget_minutes: float | None = None) -> pd.DataFrame:
    """Train each model with `base`'s settings (same data, seed, epochs) into out_dir/<model>; write comparison.csv.

    budget_minutes caps each model's training time (Lightning max_time). Returns the table (one row a model).
    """
    from chestxray.training.train import train

    if not models:
        raise ConfigError("--models is empty; give a comma-separated list such as cnn-small,resnet18")
    for name in models:
        get_spec(name)  # unknown names fail before any training starts
    if budget_minutes is not None and budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {budget_minutes}")
    out = Path(out_dir)
    configs = [replace(base, model=name, out=str(out / name), max_minutes=budget_minutes or base.max_minutes)
               for name in models]
    for config in configs:
        validate_config(config)
    rows = []
    for config in configs:
        log.info("training %s into %s", config.model, config.out)
        result = train(config)
        rows.append({"model": config.model,
                     "val_auroc": result.best_val_auroc if not math.isnan(result.best_val_auroc) else None,
                     "seconds": round(result.seconds, 2), "parameters": result.parameters,
                     "images_per_s": round(result.images_per_s, 1), "epochs": result.epochs, "steps": result.steps,
                     "run_dir": str(result.run_dir)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(out / "comparison.csv", table)
    return table
