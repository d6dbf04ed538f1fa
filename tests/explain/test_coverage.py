"""Empty heatmaps counted per outcome, and the evidence-against map drawn for negatives instead of a grey square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from chestxray.explain.attribution import attribute
from chestxray.explain.coverage import MEANING, coverage_table, coverage_text
from chestxray.explain.explanations import explain_images
from chestxray.explain.localize import is_empty_map
from chestxray.models.bundle import Bundle
from tests.explain.helpers import SIZE


class DimmerNet(torch.nn.Sequential):
    """Brightness lowers the 'Mass' logit: conv (mean filter, bias 1: its output is positive for inputs in [-1, 1])
    -> ReLU -> pool -> linear with weight -10. So no region pushes Mass up (its Grad-CAM is empty) while bright
    regions push it down."""

    def __init__(self) -> None:
        super().__init__(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                         torch.nn.Flatten(), torch.nn.Linear(1, 1))
        with torch.no_grad():
            self[0].weight.fill_(1 / 9)
            self[0].bias.fill_(1.0)
            self[4].weight.fill_(-10.0)
            self[4].bias.zero_()


def _image(tmp_path: Path) -> Path:
    pixels = np.full((SIZE, SIZE), 10, dtype=np.uint8)
    pixels[8:16, 20:28] = 250  # one bright patch: the evidence against Mass
    path = tmp_path / "dim.png"
    Image.fromarray(pixels).save(path)
    return path


def _bundle(tmp_path: Path) -> Bundle:
    card = {"architecture": "test", "num_labels": 1, "in_chans": 1, "image_size": SIZE, "resize": "pad",
            "normalization": "gray", "labels": ["Mass"], "task": "binary", "thresholds": {"Mass": 0.5},
            "threshold_tta": "none"}
    return Bundle(net=DimmerNet().eval(), card=card, path=tmp_path)


def test_evidence_against_fills_the_empty_map_of_a_negative(tmp_path: Path) -> None:
    path, bundle = _image(tmp_path), _bundle(tmp_path)
    inputs = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 127.5 - 1.0)[None, None]  # 'gray'

    assert is_empty_map(attribute(bundle.net, inputs, 0, "gradcam")[0])
    against = attribute(bundle.net, inputs, 0, "gradcam", sign=-1)[0]
    assert not is_empty_map(against) and against[8:16, 20:28].mean() > 3 * against[24:, :8].mean()

    auto = explain_images(bundle, [path], label="Mass", out_dir=tmp_path / "auto")[0]
    assert auto.probability < 0.5 and auto.for_map_empty and auto.shown == "evidence against"
    assert not is_empty_map(auto.heatmap) and "evidence against Mass" in auto.caption.method
    kept = explain_images(bundle, [path], label="Mass", out_dir=tmp_path / "for", negatives="for")[0]
    assert kept.shown == "evidence for" and is_empty_map(kept.heatmap)
    scores = pd.read_csv(tmp_path / "auto" / "scores.csv")
    assert scores[["for_map_empty", "map_shown"]].values.tolist() == [[1, "evidence against"]]
    coverage = pd.read_csv(tmp_path / "auto" / "coverage.csv")
    assert coverage.to_dict("records")[-1] == {"outcome": "all", "maps": 1, "empty": 1, "share_empty": 1.0}


def test_coverage_counts_per_outcome_and_says_it_in_words() -> None:
    table = coverage_table(["TP", "TP", "FN", "TN", "TN", "TN", "FP"], [False, False, True, True, True, False, False])
    assert table.set_index("outcome")["empty"].to_dict() == {"TP": 0, "FP": 0, "FN": 1, "TN": 2, "all": 3}
    assert table.set_index("outcome").loc["TN", "share_empty"] == pytest.approx(2 / 3)
    text = coverage_text(table)
    assert text.startswith("empty gradcam maps (evidence for the finding): TP 0/2, FP 0/1, FN 1/1, TN 2/3; all 3/7")
    assert "not a sign the model looked nowhere" in MEANING
