"""ONNX export: onnxruntime agrees with PyTorch on real samples for three registered models, the batch axis is
dynamic, the card travels in the metadata, and `chestxray predict model.onnx` runs without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.deploy.onnx_export import CARD_KEY, OPSET, PREPROCESSING_KEY, export_onnx
from chestxray.errors import ModelError
from chestxray.inference.onnx_model import onnx_scorer
from chestxray.inference.predict import torch_scorer
from chestxray.inference.stream import load_pixels
from chestxray.models import build_model
from chestxray.models.bundle import save_bundle

LABELS = ["Atelectasis", "Effusion", "Pneumonia"]


def _bundle(root: Path, arch: str, size: int, normalization: str = "gray", in_chans: int = 1) -> Path:
    torch.manual_seed(0)
    return save_bundle(root / arch, build_model(arch, num_labels=len(LABELS), in_chans=in_chans), {
        "architecture": arch, "num_labels": len(LABELS), "in_chans": in_chans, "image_size": size, "resize": "pad",
        "normalization": normalization, "labels": LABELS, "thresholds": {"Atelectasis": 0.5, "Effusion": 0.4,
                                                                         "Pneumonia": 0.6}})


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> list[Path]:
    nih = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[:3]
    kaggle = sorted((shared_data / "kaggle-chest-xray-pneumonia" / "PNEUMONIA").glob("*.jpeg"))[:2]
    return nih + kaggle


@pytest.mark.parametrize("arch,size,normalization,in_chans", [
    ("cnn-tiny", 32, "gray", 1), ("cnn-small", 48, "imagenet", 1), ("resnet18", 64, "imagenet", 3)])
def test_onnxruntime_matches_pytorch_on_real_samples(samples, tmp_path: Path, arch: str, size: int,
                                                     normalization: str, in_chans: int) -> None:
    bundle = _bundle(tmp_path, arch, size, normalization, in_chans)
    path = export_onnx(bundle, tmp_path / f"{arch}.onnx")
    card = json.loads(Path(bundle, "card.json").read_text())
    pixels = np.stack([load_pixels(p, card) for p in samples])
    ours, ref = onnx_scorer(path), torch_scorer(bundle)
    assert np.abs(ours.score(pixels) - ref.score(pixels)).max() < 1e-4
    assert np.abs(ours.score(pixels[:1]) - ref.score(pixels[:1])).max() < 1e-4  # dynamic batch: 5, then 1
    assert ours.labels == LABELS and ours.thresholds == card["thresholds"]


def test_metadata_and_opset(tmp_path: Path) -> None:
    path = export_onnx(_bundle(tmp_path, "cnn-tiny", 32), tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[CARD_KEY])["labels"] == LABELS
    assert "resize to 32x32" in meta[PREPROCESSING_KEY] and "sigmoid" in meta[PREPROCESSING_KEY]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a named, free batch axis
    with pytest.raises(ModelError, match="ending in .onnx"):
        export_onnx(tmp_path / "cnn-tiny", tmp_path / "m.bin")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="bad.onnx: not a loadable ONNX model"):
        onnx_scorer(tmp_path / "bad.onnx")


def test_cli_export_then_predict_without_torch(samples, tmp_path: Path) -> None:
    """An exported .onnx file and a bundle whose scoring graph is cached are both scored with torch blocked, and
    agree with PyTorch."""
    bundle = _bundle(tmp_path, "cnn-tiny", 32)
    model = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(bundle), "--onnx", str(model)])
    assert result.exit_code == 0 and f"opset {OPSET}" in result.output, result.output
    ref = tmp_path / "ref.csv"
    assert CliRunner().invoke(app, ["predict", str(bundle), *map(str, samples), "-o", str(ref)]).exit_code == 0
    ref_torch = tmp_path / "ref-torch.csv"
    assert CliRunner().invoke(app, ["predict", str(bundle), *map(str, samples), "-o", str(ref_torch),
                                    "--engine", "torch"]).exit_code == 0
    # the exported .onnx file, and the bundle itself (its graph cached by the first predict), with torch blocked
    for name, source in (("onnx", model), ("bundle", bundle)):
        out = tmp_path / f"{name}.csv"
        blocked = ("import sys; sys.modules['torch'] = None; from chestxray.cli import main; "
                   f"sys.argv = ['chestxray', 'predict', {str(source)!r}, *{[str(s) for s in samples]!r}, "
                   f"'-o', {str(out)!r}]; main()")
        run = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (name, run.stderr)
        assert "5 image(s) scored, 0 quarantined" in run.stdout
        cols = [f"p_{x}" for x in LABELS]
        a, b = pd.read_csv(out), pd.read_csv(ref_torch)
        assert np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-4, name
        assert (a[[f"pred_{x}" for x in LABELS]].to_numpy() == b[[f"pred_{x}" for x in LABELS]].to_numpy()).all()


def test_cli_export_dynamo_matches_pytorch(samples, tmp_path: Path) -> None:
    """`export --dynamo` (the torch.export-based exporter): a free batch axis and PyTorch's probabilities."""
    bundle = _bundle(tmp_path, "cnn-tiny", 32)
    model = tmp_path / "dynamo.onnx"
    result = CliRunner().invoke(app, ["export", str(bundle), "--onnx", str(model), "--dynamo"])
    assert result.exit_code == 0 and f"opset {OPSET}" in result.output, result.output
    proto = onnx.load(str(model))
    assert json.loads({p.key: p.value for p in proto.metadata_props}[CARD_KEY])["labels"] == LABELS
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    card = json.loads(Path(bundle, "card.json").read_text())
    pixels = np.stack([load_pixels(p, card) for p in samples])
    ours, ref = onnx_scorer(model), torch_scorer(bundle)
    assert np.abs(ours.score(pixels) - ref.score(pixels)).max() < 1e-4
    assert np.abs(ours.score(pixels[:1]) - ref.score(pixels[:1])).max() < 1e-4
