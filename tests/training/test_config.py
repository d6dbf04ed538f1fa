"""Training configs: defaults ← YAML ← flags, validated before anything heavy."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chestxray.errors import ConfigError, DataError, ModelError
from chestxray.training.config import TrainConfig, resolve_config


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
