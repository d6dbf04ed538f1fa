"""Bundle cards: the metrics layout (training and evaluation kept apart) and old cards read into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chestxray.models.bundle import card_metrics, read_card, update_card

CARD = {"architecture": "cnn-tiny", "num_labels": 1, "in_chans": 1, "image_size": 32, "normalization": "gray",
        "labels": ["PNEUMONIA"]}


@pytest.mark.parametrize(("stored", "read"), [
    ({"val_auroc": 0.91}, {"training": {"split": "val", "val_auroc": 0.91}}),  # train, before the layout
    ({"split": "test", "tta": "none", "macro_auroc": 0.8, "auroc": {"PNEUMONIA": 0.8}},  # evaluate, before it
     {"evaluation": {"split": "test", "tta": "none", "macro_auroc": 0.8, "auroc": {"PNEUMONIA": 0.8}}}),
    ({"training": {"split": "val", "val_auroc": 0.9}, "evaluation": {"split": "test"}},
     {"training": {"split": "val", "val_auroc": 0.9}, "evaluation": {"split": "test"}}),
    ({}, {}), (None, {}),
])
def test_old_and_new_card_metrics_read_into_one_layout(tmp_path: Path, stored: object, read: dict) -> None:
    (tmp_path / "card.json").write_text(json.dumps({**CARD, "metrics": stored}))
    assert read_card(tmp_path)["metrics"] == read == card_metrics(stored)
    update_card(tmp_path, seed=1)  # any later card write stores the new layout
    assert json.loads((tmp_path / "card.json").read_text())["metrics"] == read
