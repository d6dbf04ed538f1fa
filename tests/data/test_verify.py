"""Damaged prepared data: sizes checked before training/evaluation, checksums on request, errors from loader
workers reach the user as the same one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from chestxray.data.catalog import Catalog
from chestxray.data.datamodule import ChestXrayDataModule
from chestxray.data.prepare import prepare_dataset
from chestxray.data.verify import verify_prepared
from chestxray.errors import DataError

LABELS = ("Effusion", "Mass")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        path = root / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(path)
        rows.append((f"im{i:02d}", str(path), f"p{i}", ["train", "train", "val", "test"][i % 4], i % 2, 0))
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", *LABELS])
    table[list(LABELS)] = table[list(LABELS)].astype("uint8")
    out = root / "prep"
    prepare_dataset(Catalog(table=table, labels=LABELS), out, size=16, workers=1, shard_size=6)
    return out


@pytest.fixture
def copy(prepared, tmp_path) -> Path:
    dst = tmp_path / "prep"
    shutil.copytree(prepared, dst)
    return dst


def test_manifest_records_sizes_and_checksums_and_verify_passes(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    assert len(train["shard_bytes"]) == len(train["shard_sha256"]) == len(train["shards"]) == 4
    assert train["shard_bytes"][0] == (prepared / train["shards"][0]).stat().st_size
    result = verify_prepared(prepared, checksums=True)
    assert result.shards == 8 and result.checksums
    out = CliRunner().invoke(_app(), ["verify", str(prepared), "--checksums"])
    assert out.exit_code == 0 and "8 shard(s)" in out.output and "sizes and sha256 checksums match" in out.output


def _app():
    from chestxray.cli import app

    return app


def test_truncated_shard_is_named_before_training_and_by_verify(copy):
    shard = copy / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    pattern = (r"train-000001.tar: shard is 1,000 bytes, manifest.json records [\d,]+ \(truncated\); re-run "
               r"'chestxray prepare' with the same catalog and --out")
    with pytest.raises(DataError, match=pattern):
        ChestXrayDataModule(copy, batch_size=4)
    out = CliRunner().invoke(_app(), ["verify", str(copy)])
    assert out.exit_code == 1 and "train-000001.tar: shard is 1,000 bytes" in out.output
    assert "Traceback" not in out.output


def test_altered_shard_is_found_by_checksums_only(copy):
    shard = copy / "val-000000.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF  # inside the first sample's pixels: same size, other content
    shard.write_bytes(bytes(data))
    ChestXrayDataModule(copy, batch_size=4, verify="sizes")  # sizes match: the size check alone passes
    ChestXrayDataModule(copy, batch_size=4, verify_splits=("train",))  # val's checksum is not read
    for verify in ("checksums", "auto"):  # auto, the default, reads the checksums of a local folder
        with pytest.raises(DataError, match=r"val-000000.tar: shard checksum differs from manifest.json \(altered "
                                            r"or damaged\); delete it, then re-run 'chestxray prepare'"):
            ChestXrayDataModule(copy, batch_size=4, verify=verify)
    out = CliRunner().invoke(_app(), ["verify", str(copy), "--checksums"])
    assert out.exit_code == 1 and "val-000000.tar: shard checksum differs" in out.output


def test_error_in_a_loader_worker_reaches_the_user_as_one_line(copy):
    dm = ChestXrayDataModule(copy, batch_size=4, num_workers=2)
    shard = copy / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:2000])  # damaged after the start-up check
    with pytest.raises(DataError) as info:
        for _ in dm.train_dataloader():
            pass
    message = str(info.value)
    assert "\n" not in message and "Caught" not in message and "Traceback" not in message
    assert "train-000002.tar: broken shard" in message and "re-run 'chestxray prepare'" in message


def test_train_cli_on_a_truncated_shard_exits_1_with_one_line_before_training(copy, tmp_path):
    shard = copy / "test-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    out = CliRunner().invoke(_app(), ["train", str(copy), "--model", "cnn-tiny", "--epochs", "1",
                                      "--out", str(tmp_path / "run"), "--no-progress", "--no-mlflow"])
    assert out.exit_code == 1, out.output
    assert "test-000000.tar: shard is" in out.output and "re-run 'chestxray prepare'" in out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_verify_checksums_names_an_altered_shard(copy, tmp_path):
    shard = copy / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF
    shard.write_bytes(bytes(data))
    out = CliRunner().invoke(_app(), ["train", str(copy), "--model", "cnn-tiny", "--epochs", "1", "--verify-checksums",
                                      "--out", str(tmp_path / "run"), "--no-progress", "--no-mlflow"])
    assert out.exit_code == 1, out.output
    assert "train-000000.tar: shard checksum differs from manifest.json" in out.output
