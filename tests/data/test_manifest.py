"""Issue 22, prepared data: same-size damage caught by default, the manifest protected by its own digest and checked
field by field, shard paths that leave the folder refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.catalog import Catalog
from chestxray.data.datamodule import ChestXrayDataModule
from chestxray.data.manifest import DIGEST
from chestxray.data.prepare import prepare_dataset
from chestxray.data.shards import read_manifest
from chestxray.errors import DataError
from tests.data import probes

LABELS = ("Effusion", "Mass")


def _catalog(root: Path, write: bool = True) -> Catalog:
    rows = []
    for i in range(40):
        path = probes.png(root / f"{i:02d}.png", seed=i, size=(20, 20)) if write else root / f"{i:02d}.png"
        rows.append((f"im{i:02d}", str(path), f"p{i}", ["train", "train", "val", "test"][i % 4], i % 2, i % 3 == 0))
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", *LABELS])
    table[list(LABELS)] = table[list(LABELS)].astype("uint8")
    return Catalog(table=table, labels=LABELS)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    prepare_dataset(_catalog(root), root / "prep", size=16, workers=1, shard_size=6)
    return root / "prep"


@pytest.fixture
def copy(prepared, tmp_path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "prep"))


def _verify(folder: Path):
    return CliRunner().invoke(app, ["verify", str(folder)], terminal_width=400)


def test_flipped_label_bytes_are_caught_by_default(copy: Path, tmp_path: Path) -> None:
    shard = copy / "val-000000.tar"
    size = shard.stat().st_size
    assert probes.flip_label_bytes(shard) == 3 and shard.stat().st_size == size
    with pytest.raises(DataError, match="val-000000.tar: shard checksum differs from manifest.json"):
        ChestXrayDataModule(copy, batch_size=4)  # train and evaluate build this, with the default check
    out = CliRunner().invoke(app, ["train", str(copy), "--model", "cnn-tiny", "--epochs", "1", "--out",
                                   str(tmp_path / "run"), "--no-progress", "--no-mlflow"], terminal_width=400)
    probes.one_line_error(out, "val-000000.tar: shard checksum differs from manifest.json")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_hand_edited_manifest_is_refused_by_its_digest(copy: Path) -> None:
    probes.edit_manifest(copy, lambda m: {**m, "image_size": 32})
    probes.one_line_error(_verify(copy), r"manifest.json: its content does not match its manifest_sha256 .* re-run "
                                         r"'chestxray prepare' with the same catalog and --out")


@pytest.mark.parametrize("probe, change, message", [
    ("no splits", lambda m: {k: v for k, v in m.items() if k != "splits"}, "'splits' must map split names"),
    ("splits a list", lambda m: {**m, "splits": [m["splits"]]}, "'splits' must map split names"),
    ("path leaves the folder", lambda m: {**m, "splits": {**m["splits"], "val": {
        **m["splits"]["val"], "shards": ["../outside.tar"] + m["splits"]["val"]["shards"][1:]}}},
     r"shard '../outside.tar' is not a plain file name inside the folder"),
    ("absolute shard path", lambda m: {**m, "splits": {**m["splits"], "val": {
        **m["splits"]["val"], "shards": ["/etc/passwd.tar"] + m["splits"]["val"]["shards"][1:]}}},
     r"shard '/etc/passwd.tar' is not a plain file name"),
    ("count disagrees", lambda m: {**m, "splits": {**m["splits"], "test": {**m["splits"]["test"], "count": 99}}},
     r"split 'test': 'count' 99 is not the sum of 'shard_counts' \(10\)"),
    ("image size absurd", lambda m: {**m, "image_size": 100000}, r"'image_size' must be a whole number of pixels"),
    ("image size text", lambda m: {**m, "image_size": "thirty-two"}, r"found thirty-two"),
    ("labels not a list", lambda m: {**m, "labels": "Effusion"}, r"'labels' must be a list of distinct names"),
    ("positives short", lambda m: {**m, "splits": {**m["splits"], "val": {**m["splits"]["val"], "positives": [1]}}},
     r"'positives' must hold one count per label \(2 labels\)"),
])
def test_resealed_manifest_that_lies_is_refused_field_by_field(copy: Path, probe: str, change, message: str) -> None:
    probes.edit_manifest(copy, change, reseal=True)
    with pytest.raises(DataError, match=message):
        read_manifest(copy)
    probes.one_line_error(_verify(copy), message)


def test_manifest_that_is_a_list_is_one_line(copy: Path) -> None:
    probes.edit_manifest(copy, lambda m: [m])
    probes.one_line_error(_verify(copy), "manifest.json: expected a JSON object, found a list")


def test_wrong_label_count_is_named_not_a_shape_error(copy: Path, tmp_path: Path) -> None:
    """A manifest (resealed) naming three labels over shards holding two: before, a shape error from the loss."""
    def third_label(m: dict) -> dict:
        splits = {s: {**e, "positives": [*e["positives"], 0], "annotated": [*e["annotated"], e["count"]]}
                  for s, e in m["splits"].items()}
        return {**m, "labels": [*m["labels"], "Nodule"], "splits": splits}

    probes.edit_manifest(copy, third_label, reseal=True)
    dm = ChestXrayDataModule(copy, batch_size=4)  # every shard is intact: the checksums pass
    with pytest.raises(DataError, match=r"sample \d+ holds 2 label\(s\) but manifest.json names 3; the shards "
                                        r"and the manifest come from different prepare runs"):
        next(iter(dm.train_dataloader()))
    out = CliRunner().invoke(app, ["train", str(copy), "--model", "cnn-tiny", "--epochs", "1", "--num-workers", "0",
                                   "--out", str(tmp_path / "run"), "--no-progress", "--no-mlflow"], terminal_width=400)
    probes.one_line_error(out, r"holds 2 label\(s\) but manifest.json names 3")


def test_manifest_without_digest_is_refused_and_prepare_reseals_it(copy: Path, prepared: Path) -> None:
    probes.edit_manifest(copy, lambda m: {k: v for k, v in m.items() if k != DIGEST})
    probes.one_line_error(_verify(copy), r"no manifest_sha256 \(written by an older chestxray, or edited\); re-run "
                                         "'chestxray prepare'")
    result = prepare_dataset(_catalog(prepared.parent, write=False), copy, size=16, workers=1, shard_size=6)
    assert result.written_shards == 0 and result.reused_shards == 8  # the shards still match: only the manifest
    assert read_manifest(copy)[DIGEST] == read_manifest(prepared)[DIGEST]


def test_digest_ignores_the_creation_time_so_reruns_match(prepared: Path, tmp_path: Path) -> None:
    first = read_manifest(prepared)
    again = probes.edit_manifest(Path(shutil.copytree(prepared, tmp_path / "p")),
                                 lambda m: {**m, "created": "2000-01-01T00:00:00Z"})
    assert read_manifest(tmp_path / "p")[DIGEST] == first[DIGEST] == again[DIGEST]
