"""Issue 22, bundle cards validated when a bundle is opened: each field's type and range, agreement with the other
fields and with the weights; NaN weights or thresholds refused; every refusal one line that quotes briefly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.errors import ModelError
from chestxray.models import build_model
from chestxray.models.bundle import load_bundle, read_card, save_bundle
from tests.data import probes

CARD = {"architecture": "cnn-tiny", "num_labels": 2, "in_chans": 1, "image_size": 32, "resize": "crop",
        "normalization": "gray", "labels": ["Effusion", "Mass"], "task": "multilabel",
        "thresholds": {"Effusion": 0.4, "Mass": 0.6}, "threshold_method": "youden on val"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("card") / "bundle", build_model("cnn-tiny", num_labels=2), CARD)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
    return path


def _edited(bundle: Path, tmp_path: Path, **fields) -> Path:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    card = json.loads((copy / "card.json").read_text())
    card.update(fields)
    (copy / "card.json").write_text(json.dumps(card))  # json writes NaN as NaN, which json.loads reads back
    return copy


CASES = [
    ({"image_size": "thirty-two"}, r"image_size 'thirty-two' is not a whole number of pixels from 8 to 4096"),
    ({"image_size": 100000}, r"image_size 100000 is not a whole number of pixels from 8 to 4096"),
    ({"image_size": True}, r"image_size True is not a whole number"),
    ({"thresholds": "high"}, r"thresholds 'high' is not null or \{label: probability from 0 to 1\}"),
    ({"thresholds": {"Effusion": math.nan, "Mass": 0.6}}, r"the threshold of 'Effusion' is nan, not a probability"),
    ({"thresholds": {"Effusion": 1.5, "Mass": 0.6}}, r"the threshold of 'Effusion' is 1.5, not a probability"),
    ({"thresholds": {"Nodule": 0.5}}, r"thresholds name label\(s\) \['Nodule'\] that are not among the card's"),
    ({"labels": ["Mass", "Mass"]}, r"labels \['Mass', 'Mass'\] is not a list of distinct label names"),
    ({"num_labels": 3}, r"num_labels 3 does not match the 2 label name\(s\)"),
    ({"in_chans": 2}, r"in_chans 2 is not 1 or 3"),
    ({"resize": "squash"}, r"resize 'squash' is not one of \['crop', 'pad', 'stretch'\]"),
    ({"task": "regression"}, r"task 'regression' is not one of"),
    ({"normalization": {"mean": [math.nan] * 3, "std": [1, 1, 1]}}, r"normalization .* of finite numbers"),
    ({"normalization": "sepia"}, r"unknown normalization 'sepia'"),
    ({"input_std": [0.0]}, r"input_std \[0.0\] is not 1 finite number\(s\), one per input channel, all above 0"),
    ({"format": "other/9"}, r"format 'other/9', expected 'chestxray-bundle/1'"),
    ({"architecture": "x" * 5000}, r"architecture 'xxxx.*…\(5,002 characters\) is not a model name"),
]


@pytest.mark.parametrize("fields, message", CASES, ids=[next(iter(c[0])) + str(i) for i, c in enumerate(CASES)])
def test_each_bad_card_field_is_refused_in_one_line(bundle: Path, tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message) as info:
        read_card(_edited(bundle, tmp_path, **fields))
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


@pytest.mark.parametrize("fields, message", [CASES[0], CASES[1], CASES[3], CASES[4]],
                         ids=["text", "huge", "high", "nan"])
def test_predict_and_serve_refuse_the_card_instead_of_a_traceback(bundle: Path, image: Path, tmp_path: Path,
                                                                 fields: dict, message: str) -> None:
    """Before: tracebacks (HTTP 500 in serve), 20.7 GB allocated for image_size 100000, NaN thresholds 'negative'."""
    copy = _edited(bundle, tmp_path, **fields)
    probes.one_line_error(CliRunner().invoke(app, ["predict", str(copy), str(image)], terminal_width=300), message)
    probes.one_line_error(CliRunner().invoke(app, ["serve", str(copy), "--port", "8765"], terminal_width=300),
                          message)


def test_unknown_threshold_tta_is_refused(bundle: Path, image: Path, tmp_path: Path) -> None:
    copy = _edited(bundle, tmp_path, threshold_tta="flip")
    probes.one_line_error(CliRunner().invoke(app, ["predict", str(copy), str(image)], terminal_width=300),
                          r"the card's threshold_tta 'flip' is not one of \['none', 'hflip', 'crop', 'tencrop'\]")


def test_nan_weights_are_refused(tmp_path: Path, image: Path) -> None:
    net = build_model("cnn-tiny", num_labels=2)
    with torch.no_grad():
        next(iter(net.parameters())).view(-1)[0] = math.nan
    folder = save_bundle(tmp_path / "nan", net, CARD)
    with pytest.raises(ModelError, match=r"model.safetensors: 1 weight tensor\(s\) hold NaN or infinite values"):
        load_bundle(folder)
    probes.one_line_error(CliRunner().invoke(app, ["predict", str(folder), str(image)], terminal_width=300),
                          "hold NaN or infinite values")


def test_a_healthy_card_still_loads(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    assert loaded.labels == ("Effusion", "Mass") and loaded.thresholds == {"Effusion": 0.4, "Mass": 0.6}
