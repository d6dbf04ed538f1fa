"""The search-space parser and the storage check: bad input is a clear ConfigError before any training."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chestxray.errors import ConfigError, ModelError
from chestxray.training.config import TrainConfig
from chestxray.workflows.search_space import DEFAULT_SPACE_YAML, parse_space, read_space, suggest
from chestxray.workflows.tune_storage import open_storage


@pytest.fixture()
def base(synthetic_prepared: Path) -> TrainConfig:
    return TrainConfig(prepared=str(synthetic_prepared), model="cnn-tiny", epochs=2, mlflow=False)


def _space(params: dict, base: TrainConfig, **sections):
    return parse_space({"params": params, **sections}, base, "space.yaml")


def test_default_space_parses_and_skips_what_does_not_apply(base: TrainConfig) -> None:
    import optuna

    space = read_space(None, base)
    assert {p.name for p in space.params} >= {"lr", "weight_decay", "batch_size", "loss", "dropout"}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen = [suggest(study.ask(), space, base) for _ in range(12)]
    for settings in seen:
        assert ("focal_gamma" in settings) == (settings["loss"] == "focal")
        assert ("warmup_fraction" in settings) == (settings["scheduler"] == "cosine")
        assert 1e-5 <= settings["lr"] <= 1e-2
    assert "dropout" in seen[0]  # cnn-tiny has a dropout layer
    resnet = read_space(None, TrainConfig(prepared=base.prepared, model="resnet18"))
    assert "dropout" not in suggest(study.ask(), resnet, TrainConfig(prepared=base.prepared, model="resnet18"))
    assert yaml.safe_load(DEFAULT_SPACE_YAML)["params"]


@pytest.mark.parametrize("params, message", [
    ({"learning_rate": {"low": 1e-5, "high": 1e-2}}, "unknown parameter 'learning_rate'"),
    ({"lr": {"low": 1e-2, "high": 1e-5}}, "empty range"),
    ({"lr": {"low": 0.0, "high": 1e-2, "log": True}}, "log range must stay above 0"),
    ({"batch_size": []}, "empty list of choices"),
    ({"lr": {"low": 1e-5, "hgh": 1e-2}}, "did you mean 'high'"),
    ({"loss": ["bce", "focl"]}, "'focl' is not one of"),
    ({"prepared": ["a", "b"]}, "is fixed per study"),
    ({"batch_size": {"low": 8.5, "high": 64}}, "not an integer"),
])
def test_bad_space_is_one_clear_error(base: TrainConfig, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _space(params, base)
    assert "space.yaml" in str(info.value)


def test_unknown_name_gets_closest_match(base: TrainConfig) -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter 'weight_decy' \(did you mean 'weight_decay'\?\)"):
        _space({"weight_decy": {"low": 1e-6, "high": 1e-2, "log": True}}, base)
    with pytest.raises(ModelError, match="did you mean 'cnn-tiny'"):
        _space({"model": ["cnn-tiny", "cnn-tiyn"]}, base)
    with pytest.raises(ConfigError, match="pruner: unknown argument 'n_startup'"):
        _space({"lr": [1e-3]}, base, pruner={"name": "median", "n_startup": 3})
    with pytest.raises(ConfigError, match="unknown section 'pruners'"):
        _space({"lr": [1e-3]}, base, pruners={"name": "median"})


def test_unreachable_storage_names_it_and_how_to_check() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://tuner:secret@127.0.0.1:{port}/optuna"
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    text = str(info.value)
    assert f"127.0.0.1:{port}/optuna" in text and "cannot be reached" in text
    assert f"pg_isready -h 127.0.0.1 -p {port}" in text
    assert "secret" not in text


def test_cli_rejects_bad_space_before_training(base: TrainConfig, tmp_path: Path) -> None:
    from chestxray.cli import app

    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {low: 0, high: 0.1, log: true}\n", encoding="utf-8")
    out = tmp_path / "tune"
    result = CliRunner().invoke(app, ["tune", base.prepared, "--space", str(space), "--model", "cnn-tiny",
                                      "--out", str(out), "--no-mlflow"])
    assert result.exit_code == 1
    assert "log range must stay above 0" in result.output and "Traceback" not in result.output
    assert not (out / "trials").exists()
