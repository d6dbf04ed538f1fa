"""compare: several models trained on the same prepared data, one table (CLI `chestxray compare`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner


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
