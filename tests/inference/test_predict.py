"""Inference: files and prepared shards give the same scores, TTA averages views, bad files are quarantined."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.labels import NIH14
from chestxray.data.prepare import prepare_dataset
from chestxray.data.sources.nih import read_nih
from chestxray.data.split import assign_splits
from chestxray.data.synth import make_synthetic
from chestxray.errors import ConfigError, ModelError
from chestxray.inference.predict import predict_images, predict_split, torch_backend
from chestxray.inference.scoring import score_pixels
from chestxray.models import build_model
from chestxray.models.bundle import load_bundle, save_bundle, update_card


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """A cnn-tiny bundle (14 labels, 32 px) with thresholds, prepared synthetic data and its catalog table."""
    root = tmp_path_factory.mktemp("predict")
    src = make_synthetic(root / "synth", n=30, size=48, seed=3)
    catalog = assign_splits(read_nih(src / "labels.csv", src / "images"), ratios=(0.4, 0.3, 0.3), seed=0)
    prepare_dataset(catalog, root / "prepared", size=32, resize="crop", workers=0)
    torch.manual_seed(0)
    bundle = save_bundle(root / "bundle", build_model("cnn-tiny", num_labels=14), {
        "architecture": "cnn-tiny", "num_labels": 14, "in_chans": 1, "image_size": 32, "resize": "crop",
        "normalization": "gray", "labels": list(NIH14), "task": "multilabel", "prepared": str(root / "prepared"),
    })
    update_card(bundle, thresholds={name: 0.5 for name in NIH14}, threshold_method="youden on val")
    return bundle, root / "prepared", catalog.table


def test_files_and_prepared_shards_give_the_same_scores(setup) -> None:
    bundle, prepared, table = setup
    from_shards = predict_split(bundle, prepared, "test", batch_size=4)
    paths = table.set_index("image_id").loc[from_shards["image_id"], "path"].tolist()
    from_files = predict_images(bundle, paths, batch_size=3)
    assert (from_files["status"] == "ok").all()
    cols = [f"p_{x}" for x in NIH14]
    assert np.allclose(from_files[cols].to_numpy(), from_shards[cols].to_numpy(), atol=1e-6)
    truth = table.set_index("image_id").loc[from_shards["image_id"], list(NIH14)].to_numpy()
    assert (from_shards[list(NIH14)].to_numpy() == truth).all()
    assert from_shards["patient_id"].tolist() == table.set_index("image_id").loc[from_shards["image_id"], "patient_id"].astype(str).tolist()


def test_tta_averages_the_views(setup) -> None:
    model = load_bundle(setup[0])
    backend = torch_backend(model.net, model.card, "cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    x = torch.from_numpy(pixels).float()[:, None] / 127.5 - 1  # the card's 'gray' normalisation
    with torch.inference_mode():
        plain, mirrored = model.net(x).double(), model.net(torch.flip(x, dims=[-1])).double()
    # the views' logits are averaged (the TTA score stays a log-odds); the probability is its sigmoid
    assert np.allclose(score_pixels(pixels, backend, "hflip"), torch.sigmoid((plain + mirrored) / 2).numpy(),
                       atol=1e-6)
    plain = torch.sigmoid(plain)
    crop = score_pixels(pixels, backend, "crop")
    assert crop.shape == (3, 14) and not np.allclose(crop, plain.numpy())
    with pytest.raises(ConfigError, match="unknown test-time augmentation 'rot90'"):
        score_pixels(pixels, backend, "rot90")


def test_bad_files_are_quarantined_with_the_reason(setup, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56), dtype=np.uint8)).save(good)
    rgb = tmp_path / "colour.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(rgb)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    frame = predict_images(setup[0], [good, broken, rgb, missing, empty])
    assert frame["path"].tolist() == [str(p) for p in (good, broken, rgb, missing, empty)]
    assert frame["status"].tolist() == ["ok", "quarantined", "ok", "quarantined", "quarantined"]
    bad = frame[frame["status"] == "quarantined"]
    assert all(isinstance(r, str) and r for r in bad["reason"])
    assert bad[[f"p_{x}" for x in NIH14]].isna().all().all()
    ok = frame[frame["status"] == "ok"][[f"p_{x}" for x in NIH14]]
    assert ok.stack().between(0, 1).all()


def test_cli_predict_table_csv_and_exit_codes(setup, tmp_path: Path) -> None:
    bundle, _, table = setup
    paths = table["path"].head(3).tolist()
    broken = tmp_path / "broken.png"
    broken.write_text("x")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(bundle), *paths, str(broken), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 image(s) scored, 1 quarantined" in result.output and "broken.png" in result.output
    preds = pd.read_csv(out)
    assert len(preds) == 4
    scored = preds[preds["status"] == "ok"]
    for name in NIH14:
        assert ((scored[f"p_{name}"] >= 0.5).astype(int) == scored[f"pred_{name}"]).all()
    result = CliRunner().invoke(app, ["predict", str(bundle), str(broken)])
    assert result.exit_code == 1 and "could be read" in result.output


def test_prepared_data_must_match_the_bundle(setup, tmp_path: Path) -> None:
    bundle, prepared, _ = setup
    other = save_bundle(tmp_path / "b64", build_model("cnn-tiny", num_labels=14), {
        "architecture": "cnn-tiny", "num_labels": 14, "in_chans": 1, "image_size": 64, "resize": "pad",
        "normalization": "gray", "labels": list(NIH14)})
    with pytest.raises(ModelError, match="prepare the data with --size 64"):
        predict_split(other, prepared, "test")


def test_cli_predict_applies_the_thresholds_tta_and_refuses_another(setup, tmp_path: Path) -> None:
    bundle, _, table = setup
    paths = table["path"].head(2).tolist()
    update_card(bundle, threshold_tta="hflip")
    try:
        out = tmp_path / "tta.csv"
        result = CliRunner().invoke(app, ["predict", str(bundle), *paths, "--out", str(out)])
        assert result.exit_code == 0, result.output
        flipped = predict_images(bundle, paths, tta="hflip")
        assert np.allclose(pd.read_csv(out)[f"p_{NIH14[0]}"], flipped[f"p_{NIH14[0]}"])
        refused = CliRunner().invoke(app, ["predict", str(bundle), *paths, "--tta", "none"])
        assert refused.exit_code == 1 and "made with --tta hflip" in refused.output
    finally:
        update_card(bundle, threshold_tta="none")


def test_single_file_path_refuses_a_decompression_bomb_from_its_header(tmp_path):
    """predict (and any serve-style caller of load_pixels) gets the same pixel limit as prepare."""
    from chestxray.data.synth import write_png_bomb
    from chestxray.errors import DataError
    from chestxray.inference.scoring import load_pixels

    bomb = write_png_bomb(tmp_path / "upload.png", 20_000, 10_000)
    with pytest.raises(DataError, match=r"upload.png: image too large: 20000 × 10000 px = 200 megapixels, above the "
                                        r"limit of 100 megapixels"):
        load_pixels(bomb, {"image_size": 32, "resize": "pad"})
