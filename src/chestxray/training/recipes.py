"""The three transfer-learning recipes of the pneumonia study, as named presets of training settings.

- scratch: random initialisation, everything trains (e.g. `cnn-small`);
- frozen: ImageNet backbone frozen (BatchNorm statistics included), only a new head trains;
- finetune: ImageNet weights, the last two backbone stages and the head train, the backbone at a tenth of the
  head's learning rate (two AdamW param groups).
A recipe is a settings layer: defaults ← recipe ← YAML ← flags, so any of its settings can still be overridden.
"""

from __future__ import annotations

from typing import Any

from chestxray.data.labels import closest
from chestxray.errors import ConfigError

RECIPES: dict[str, dict[str, Any]] = {
    "scratch": {"pretrained": None, "freeze": "none", "unfreeze_last": 0, "backbone_lr_scale": 1.0},
    "frozen": {"pretrained": "imagenet", "freeze": "backbone", "unfreeze_last": 0, "backbone_lr_scale": 1.0},
    "finetune": {"pretrained": "imagenet", "freeze": "backbone", "unfreeze_last": 2, "backbone_lr_scale": 0.1},
}


def recipe_settings(name: str | None) -> dict[str, Any] | None:
    """The settings of recipe `name` (None → None, i.e. no layer); unknown names list the valid ones."""
    if name is None:
        return None
    if name not in RECIPES:
        raise ConfigError(f"--recipe {name!r} is not one of {list(RECIPES)}{closest(name, list(RECIPES))}")
    return dict(RECIPES[name])
