"""Missing labels and sources in prepared shards, and per-source sampling in the data module."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from chestxray.data.catalog import load_catalog
from chestxray.data.datamodule import ChestXrayDataModule
from chestxray.data.manifest import check_manifest, seal
from chestxray.data.sampling import epoch_multiplicity, parse_sampling, plan_sources
from chestxray.data.shards import iter_split_samples, read_manifest
from chestxray.errors import ConfigError, DataError


def test_plans() -> None:
    natural = plan_sources(["a", "b"], [30, 10])
    assert natural.draws == (30, 10)
    balanced = plan_sources(["a", "b"], [30, 10], "balanced")
    assert balanced.draws == (20, 20)
    weighted = plan_sources(["a", "b", "c"], [30, 10, 5], "a=1,b=3")
    assert weighted.draws == (10, 30, 0)  # c (weight 0) left out: the epoch is a and b's 40 images
    only = plan_sources(["a", "b"], [30, 10], "natural", ["b"])
    assert only.draws == (0, 10)
    with pytest.raises(ConfigError, match="not sources"):
        plan_sources(["a", "b"], [3, 1], "natural", ["z"])
    with pytest.raises(ConfigError, match="positive weight"):
        parse_sampling("a=0")
    source_of = np.array([0] * 30 + [1] * 10)
    uses = epoch_multiplicity(source_of, balanced, seed=0, epoch=3)
    assert uses[:30].sum() == 20 and uses[30:].sum() == 20 and set(uses[30:]) == {2}
    assert uses[:30].max() == 1  # the large source drawn without replacement
    assert not np.array_equal(uses, epoch_multiplicity(source_of, balanced, seed=0, epoch=4))


def test_shards_store_missing_labels_and_sources(merged_prepared: Path) -> None:
    manifest = read_manifest(merged_prepared)
    catalog = load_catalog(merged_prepared.parent / "catalog")
    assert manifest["missing_labels"] is True and manifest["sources"] == ["eff", "full", "nod"]
    test_rows = catalog.table[catalog.table["split"] == "test"].set_index("image_id")
    for sample in iter_split_samples(merged_prepared, "test", manifest):
        row = test_rows.loc[sample["image_id"]]
        values = row[list(catalog.labels)].to_numpy(dtype=float)
        np.testing.assert_array_equal(sample["annotated"], ~np.isnan(values))
        np.testing.assert_array_equal(sample["labels"], np.nan_to_num(values).astype(np.uint8))
        assert sample["source"] == row["source"]
    entry = manifest["splits"]["train"]
    assert entry["annotated"][catalog.labels.index("Cardiomegaly")] == entry["sources"]["count"][1]  # 'full' only
    assert sum(entry["sources"]["count"]) == entry["count"]


def test_manifest_digest_covers_the_sources_and_checks_their_shape(merged_prepared: Path) -> None:
    manifest = json.loads((merged_prepared / "manifest.json").read_text())
    edited = json.loads(json.dumps(manifest))
    edited["splits"]["train"]["sources"]["shard_codes"][0] = "0" * len(edited["splits"]["train"]["sources"][
        "shard_codes"][0])
    with pytest.raises(DataError, match="does not match"):
        check_manifest(edited, "manifest.json")
    bad = json.loads(json.dumps(manifest))
    bad["splits"]["train"]["sources"]["shard_codes"][0] += "0"
    with pytest.raises(DataError, match="one source character per sample"):
        check_manifest(seal(bad), "manifest.json")
    bad = json.loads(json.dumps(manifest))
    bad["splits"]["train"]["annotated"][0] = bad["splits"]["train"]["count"] + 1
    with pytest.raises(DataError, match="annotated"):
        check_manifest(seal(bad), "manifest.json")


def test_batches_carry_nan_for_missing_and_sampling_follows_the_plan(merged_prepared: Path) -> None:
    dm = ChestXrayDataModule(merged_prepared, batch_size=16, num_workers=0, source_sampling="balanced")
    seen = collections.Counter()
    for batch in dm.train_dataloader():
        labels = batch["labels"].numpy()
        for source, row in zip(batch["source"], labels):
            seen[source] += 1
            if source == "eff":  # annotates Effusion and Nodule only
                assert np.isnan(row).sum() == len(row) - 2 and not np.isnan(row[dm.labels.index("Effusion")])
    counts = dm.manifest["splits"]["train"]["sources"]["count"]
    assert sum(seen.values()) == sum(counts) and max(seen.values()) - min(seen.values()) <= 1
    only = ChestXrayDataModule(merged_prepared, batch_size=16, num_workers=0, sources=["eff"])
    assert {s for b in only.train_dataloader() for s in b["source"]} == {"eff"}
    assert {s for b in only.val_dataloader() for s in b["source"]} == {"eff"}
    assert {s for b in only.split_dataloader("val") for s in b["source"]} == {"eff", "full", "nod"}  # evaluation


def test_pos_weight_counts_annotated_images_only(merged_prepared: Path) -> None:
    dm = ChestXrayDataModule(merged_prepared, batch_size=16, num_workers=0)
    train = dm.manifest["splits"]["train"]
    weights = dm.pos_weight().numpy()
    for j in range(len(dm.labels)):
        pos, ann = train["positives"][j], train["annotated"][j]
        assert weights[j] == pytest.approx((ann - pos) / max(pos, 1))
        assert ann < train["count"] or dm.labels[j] == "Nodule"  # missing for some source (Nodule: none)
    skewed = ChestXrayDataModule(merged_prepared, batch_size=16, num_workers=0, source_sampling="eff=4,full=1,nod=1")
    plan = skewed.source_plans["train"]
    by = train["sources"]
    j = dm.labels.index("Effusion")
    uses = plan.multiplicity
    pos = sum(u * p[j] for u, p in zip(uses, by["positives"]))
    ann = sum(u * a[j] for u, a in zip(uses, by["annotated"]))
    assert skewed.pos_weight().numpy()[j] == pytest.approx((ann - pos) / pos, rel=1e-5)  # as the epochs draw them
    assert skewed.pos_weight().numpy()[j] != pytest.approx(weights[j], rel=1e-3)
