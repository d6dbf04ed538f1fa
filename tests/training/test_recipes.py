"""Recipes: named presets layered under YAML and flags; the fine-tuning recipe gives the backbone a lower LR."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chestxray.errors import ConfigError, ModelError
from chestxray.models import backbone_parameter_names, build_model
from chestxray.training.config import resolve_config
from chestxray.training.module import ChestXrayModule
from chestxray.training.recipes import recipe_settings


def test_recipes_are_layers_that_flags_override(synthetic_prepared: Path) -> None:
    config = resolve_config(recipe_settings("finetune"), prepared=str(synthetic_prepared), model="efficientnet-lite0",
                            unfreeze_last=3)
    assert (config.pretrained, config.freeze, config.unfreeze_last, config.backbone_lr_scale) == \
        ("imagenet", "backbone", 3, 0.1)
    with pytest.raises(ConfigError, match=r"--recipe 'frozn' is not one of .*did you mean 'frozen'"):
        recipe_settings("frozn")
    with pytest.raises(ModelError, match=r"'cnn-small' has no ImageNet weights"):
        resolve_config(recipe_settings("frozen"), prepared=str(synthetic_prepared), model="cnn-small")


def test_backbone_and_head_get_their_own_learning_rates() -> None:
    net = build_model("cnn-small", 2)
    module = ChestXrayModule(net, ["a", "b"], lr=1e-2, backbone_lr_scale=0.1,
                             backbone_params=backbone_parameter_names(net, "cnn-small"))
    groups = {g["name"]: g for g in module.param_groups()}
    assert groups["backbone"]["lr"] == pytest.approx(1e-3) and groups["head"]["lr"] == pytest.approx(1e-2)
    head = {id(p) for p in net.head.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head
    assert len(groups["backbone"]["params"]) == len(list(net.features.parameters()))


def test_models_command_says_how_to_use_timm() -> None:
    from chestxray.cli import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "efficientnet-lite0" in result.output and "resnet152" in result.output
    assert "timm/<name>" in result.output and "--recipe" in result.output
