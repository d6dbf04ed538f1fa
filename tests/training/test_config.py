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


def test_yaml_errors_name_the_file_and_a_run_config_is_a_recipe(tmp_path: Path, synthetic_prepared: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: setting 'epochs' = 'many' is not a valid int"):
        resolve_config(tmp_path / "cfg.yaml", prepared=str(synthetic_prepared))
    # RUN/config.yaml given as --config: its stored out: is that run's folder; a new run gets its own
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: cnn-tiny\nepochs: 3\nout: {run}\nprepared: {synthetic_prepared}\n")
    config = resolve_config(run / "config.yaml")
    assert (config.model, config.epochs, config.out) == ("cnn-tiny", 3, "")
    assert resolve_config(run / "config.yaml", out=str(tmp_path / "r2")).out == str(tmp_path / "r2")
    (tmp_path / "other.yaml").write_text(f"out: {run}\nprepared: {synthetic_prepared}\n")  # a recipe naming a folder
    assert resolve_config(tmp_path / "other.yaml").out == str(run)


def test_builtin_names_match_the_registries() -> None:
    """The names checked before torch loads are exactly the registered ones (add new models/policies there too)."""
    from chestxray.data.augment import list_policies
    from chestxray.models import list_models
    from chestxray.training.config import BUILTIN_MODELS, BUILTIN_POLICIES

    assert sorted(BUILTIN_MODELS) == list_models() and sorted(BUILTIN_POLICIES) == sorted(list_policies())


def test_train_help_shows_every_default_and_what_minimal_does() -> None:
    from chestxray.cli import app

    text = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output.split())
    for flag, default in (("--epochs", 10), ("--batch-size", 32), ("--lr", "0.0001"), ("--augment", "minimal"),
                          ("--model", "densenet121"), ("--patience", 5), ("--seed", 0), ("--num-workers", 2)):
        assert f"(default: {default})" in text.split(f"│ {flag} ", 1)[1].split("│ --", 1)[0], flag
    assert "mirrors the laterality markers" in text


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
