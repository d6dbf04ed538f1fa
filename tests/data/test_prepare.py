"""prepare: shards + manifest + quarantine, resume/rebuild rules, the CLI exit codes, and the real samples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from chestxray.data.catalog import Catalog, save_catalog
from chestxray.data.prepare import STATE, prepare_dataset
from chestxray.data.shards import iter_shard, iter_split_samples, read_manifest
from chestxray.errors import DataError

LABELS = ("Effusion", "Mass")
BAD = {"corrupt.png": "corrupt", "trunc.png": "truncated", "empty.png": "empty file", "notes.png": "not an image",
       "missing.png": "file not found", "folder.png": "is a folder"}


def _catalog(root, n_good: int = 12, bad: bool = True) -> Catalog:
    """n_good random PNGs (varied sizes and modes) plus the BAD files, split train/val/test by patient."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_good):
        img = rng.integers(0, 256, (40 + i, 30 + 2 * i), dtype=np.uint8)
        path = root / f"img{i:02d}.png"
        Image.fromarray(img).convert("RGB" if i % 3 == 0 else "L").save(path)
        rows.append((f"img{i:02d}", str(path), f"p{i}", ["train", "train", "val", "test"][i % 4], i % 2, (i // 2) % 2))
    if bad:
        data = (root / "img01.png").read_bytes()
        corrupt = bytearray(data)
        corrupt[60:300] = bytes(240)
        (root / "corrupt.png").write_bytes(bytes(corrupt))
        (root / "trunc.png").write_bytes(data[: len(data) // 2])
        (root / "empty.png").write_bytes(b"")
        (root / "notes.png").write_text("not an image at all\n")
        (root / "folder.png").mkdir()
        for j, name in enumerate(BAD):
            rows.append((name.split(".")[0], str(root / name), f"q{j}", "train", 1, 0))
    table = pd.DataFrame(rows, columns=["image_id", "path", "patient_id", "split", *LABELS])
    table[list(LABELS)] = table[list(LABELS)].astype("uint8")
    return Catalog(table=table, labels=LABELS, task="multilabel", source="test")


def test_prepare_writes_shards_and_quarantines_exactly_the_bad_files(tmp_path):
    catalog = _catalog(tmp_path / "imgs")
    seen = []
    result = prepare_dataset(catalog, tmp_path / "prep", size=16, workers=2, shard_size=3,
                             progress=lambda n, total: seen.append((n, total)))
    assert result.counts == {"train": 6, "val": 3, "test": 3}
    assert sum(n for n, _ in seen) == len(catalog.table) and seen[-1][1] == len(catalog.table)
    q = pd.read_csv(tmp_path / "prep" / "quarantine.csv", dtype=str)
    assert list(q.columns) == ["path", "image_id", "reason"]
    assert sorted(q["image_id"]) == sorted(name.split(".")[0] for name in BAD)
    for name, reason in BAD.items():
        assert reason in q.loc[q["image_id"] == name.split(".")[0], "reason"].iloc[0], name
    manifest = read_manifest(tmp_path / "prep")
    assert manifest["labels"] == list(LABELS) and manifest["image_size"] == 16 and manifest["quarantined"] == len(BAD)
    train = manifest["splits"]["train"]
    assert train["count"] == sum(train["shard_counts"]) == 6
    samples = list(iter_split_samples(tmp_path / "prep", "train"))
    assert sorted(s["image_id"] for s in samples) == [f"img{i:02d}" for i in range(12) if i % 4 in (0, 1)]
    table = catalog.table.set_index("image_id")
    assert train["positives"] == [int(table.loc[[s["image_id"] for s in samples], lab].sum()) for lab in LABELS]
    for s in samples:
        assert s["image"].shape == (16, 16) and s["image"].dtype == np.uint8
        assert s["labels"].tolist() == table.loc[s["image_id"], list(LABELS)].tolist()
    assert f"quarantined {len(BAD)}" in result.summary() and "images/s" in result.summary()


def test_shards_are_plain_webdataset_tars(tmp_path):
    import webdataset as wds

    prep = tmp_path / "prep"
    prepare_dataset(_catalog(tmp_path / "imgs", n_good=8, bad=False), prep, size=16, workers=1, shard_size=100)
    url = str(prep / "train-000000.tar")
    records = list(wds.WebDataset(url, shardshuffle=False))
    assert len(records) == 4 and {"__key__", "gray", "json"} <= set(records[0])
    assert len(records[0]["gray"]) == 16 * 16
    assert json.loads(records[0]["json"])["image_id"].startswith("img")
    piped = list(iter_shard(f"pipe:cat {url}", 16))
    assert [p["image_id"] for p in piped] == [json.loads(r["json"])["image_id"] for r in records]


def test_rerun_skips_work_and_setting_change_rebuilds(tmp_path, caplog):
    catalog = _catalog(tmp_path / "imgs", n_good=8, bad=False)
    prep = tmp_path / "prep"
    first = prepare_dataset(catalog, prep, size=16, workers=1, shard_size=2)
    again = prepare_dataset(catalog, prep, size=16, workers=1, shard_size=2)
    assert again.up_to_date and again.processed == 0 and again.counts == first.counts
    with caplog.at_level("WARNING"):
        bigger = prepare_dataset(catalog, prep, size=24, workers=1, shard_size=2)
    assert bigger.rebuilt and bigger.processed == 8 and "rebuilding" in caplog.text
    assert read_manifest(prep)["image_size"] == 24
    assert next(iter_split_samples(prep, "train"))["image"].shape == (24, 24)
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(catalog.table["path"].iloc[0])  # an input file changes
    assert prepare_dataset(catalog, prep, size=24, workers=1, shard_size=2).rebuilt


def test_interrupted_run_leaves_no_complete_looking_output_and_resumes(tmp_path):
    catalog = _catalog(tmp_path / "imgs", n_good=8, bad=False)
    prep = tmp_path / "prep"
    calls = []

    def stop_after_two_shards(n, total):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(catalog, prep, size=16, workers=1, shard_size=2, progress=stop_after_two_shards)
    assert not (prep / "manifest.json").exists()
    assert not list(prep.glob(".*.tmp"))
    state = json.loads((prep / STATE).read_text())
    assert len(state["done"]) == 2 and sorted(p.name for p in prep.glob("*.tar")) == sorted(state["done"])
    resumed = prepare_dataset(catalog, prep, size=16, workers=1, shard_size=2)
    assert resumed.reused_shards == 2 and resumed.processed == 4
    assert sum(resumed.counts.values()) == 8


def test_cli_prepare_warns_on_bad_files_and_fails_when_all_bad(tmp_path):
    from chestxray.cli import app

    runner = CliRunner()
    save_catalog(_catalog(tmp_path / "imgs"), tmp_path / "cat")
    res = runner.invoke(app, ["prepare", str(tmp_path / "cat"), "--out", str(tmp_path / "prep"), "--size", "16",
                              "--workers", "1", "--shard-size", "4"])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and f"{len(BAD)} image(s)" in res.output and "train 6, val 3, test 3" in res.output
    bad = _catalog(tmp_path / "imgs2")
    only_bad = Catalog(table=bad.table[~bad.table["image_id"].str.startswith("img")].assign(split="train"),
                       labels=LABELS, task="multilabel")
    save_catalog(only_bad, tmp_path / "cat2")
    res = runner.invoke(app, ["prepare", str(tmp_path / "cat2"), "--out", str(tmp_path / "prep2"), "--size", "16",
                              "--workers", "1"])
    assert res.exit_code == 1 and f"none of the {len(BAD)} catalog images" in res.output
    assert len(pd.read_csv(tmp_path / "prep2" / "quarantine.csv")) == len(BAD)
    with pytest.raises(DataError, match="none of the"):
        prepare_dataset(tmp_path / "cat2", tmp_path / "prep2", size=16, workers=1)


def _check_counts(result, catalog) -> None:
    expected = catalog.table["split"].value_counts().to_dict()
    assert result.quarantined == 0
    assert result.counts == {s: expected[s] for s in result.counts} and sum(result.counts.values()) == len(catalog.table)
    for split, entry in result.manifest["splits"].items():
        assert entry["positives"] == catalog.split_table(split)[list(catalog.labels)].sum().astype(int).tolist()


def test_prepare_real_kaggle_folder(shared_data, tmp_path):
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    catalog = assign_splits(read_folder(shared_data / "kaggle-chest-xray-pneumonia"))
    result = prepare_dataset(catalog, tmp_path / "prep", size=32, workers=2, shard_size=500)
    _check_counts(result, catalog)


def test_prepare_real_nih_sample(shared_data, tmp_path):
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits

    root = shared_data / "nih-chestxray14"
    catalog = assign_splits(read_nih(root / "labels.csv", root / "images"))
    result = prepare_dataset(catalog, tmp_path / "prep", size=32, workers=2, shard_size=500)
    _check_counts(result, catalog)
    assert len(catalog.labels) == 14


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_shards_rewritten_by_gnu_tar_still_stream(tmp_path, fmt):
    import shutil
    import subprocess
    import tarfile

    if shutil.which("tar") is None:
        pytest.fail("the 'tar' program is needed for this test")
    prep = tmp_path / "prep"
    prepare_dataset(_catalog(tmp_path / "imgs", n_good=8, bad=False), prep, size=16, workers=1, shard_size=100)
    shard = prep / "train-000000.tar"
    with tarfile.open(shard) as tf:
        names = tf.getnames()
        tf.extractall(tmp_path / "x", filter="data")
    retarred = tmp_path / f"re-{fmt}.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(retarred), "-C", str(tmp_path / "x"), *names], check=True)
    original = [(s["image_id"], s["image"].tobytes()) for s in iter_shard(shard, 16)]
    assert [(s["image_id"], s["image"].tobytes()) for s in iter_shard(retarred, 16)] == original
    broken = tmp_path / "broken.tar"
    broken.write_bytes(shard.read_bytes()[:1500])
    with pytest.raises(DataError, match="broken shard"):
        list(iter_shard(broken, 16))
