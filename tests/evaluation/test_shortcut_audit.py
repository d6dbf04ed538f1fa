"""Shortcut measurements where the truth is known: a score that is pure aspect ratio loses its AUROC within aspect
strata, a model that reads the letterbox bars changes its decisions when the images are re-rendered, and a probe
finds what features encode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.evaluation.feature_strata import quantile_strata, stratified_auroc
from chestxray.data.geometry import probe_auroc
from chestxray.evaluation.shortcut_audit import _batched, counterfactual_table, render
from chestxray.inference.scoring import Backend, make_scorer


def test_pure_aspect_ratio_score_is_near_chance_within_aspect_strata() -> None:
    rng = np.random.default_rng(0)
    n = 1500
    aspect = rng.uniform(0.8, 1.6, n)  # wider images are more often positive (as Kaggle pneumonia images are)
    y = rng.random(n) < 1 / (1 + np.exp(-8 * (aspect - 1.2)))
    patients = np.arange(n) // 2
    shortcut = stratified_auroc(y, aspect, aspect, patients, n_boot=200)
    assert shortcut.plain > 0.85 and shortcut.plain_low > 0.8  # the feature alone predicts the label
    assert abs(shortcut.stratified - 0.5) < 0.05  # within strata it cannot
    disease = y + rng.normal(0, 0.8, n)  # a score that reads the disease keeps its AUROC
    honest = stratified_auroc(y, disease, aspect, patients, n_boot=200)
    assert abs(honest.stratified - honest.plain) < 0.03 and honest.stratified_low > 0.75
    views = np.where(aspect > 1.2, "AP", "PA")  # a categorical feature: its categories are the strata
    assert stratified_auroc(y, (views == "AP").astype(float), views, patients, n_boot=50).stratified == 0.5


def test_quantile_strata_sizes_and_missing_values() -> None:
    strata = quantile_strata(np.r_[np.arange(100.0), np.nan], n_strata=20, min_size=10)
    assert strata[-1] == -1 and strata.max() == 9 and np.bincount(strata[:-1]).min() == 10
    assert quantile_strata(["PA", "AP", None, "PA"]).tolist() == [1, 0, -1, 1]


def test_counterfactual_re_render_counts_the_flips(tmp_path: Path) -> None:
    """A model that reads the black letterbox bars (log-odds 8 × share of non-black pixels − 4): trained with pad,
    wide images score p = 0.5 and square ones sigmoid(4); re-rendered with crop or stretch the bars go and every wide image flips."""
    paths, rng, HIGH = [], np.random.default_rng(0), 1 / (1 + np.exp(-4.0))
    for i, (w, h) in enumerate([(64, 32)] * 4 + [(48, 48)] * 6):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(150, 250, (h, w), dtype=np.uint8)).save(path)  # textured: no pixel is black
        paths.append(str(path))
    rows = pd.DataFrame({"path": paths, "patient_id": [f"p{i}" for i in range(10)]})
    card = {"labels": ["Wide"], "image_size": 32, "resize": "pad", "thresholds": {"Wide": 0.75}, "task": "binary"}
    scorer = make_scorer(card, Backend("bars", lambda views: 8 * (views > 0).mean((1, 2, 3))[:, None] - 4), "test")
    pixels, ok = render(rows, 32, ["pad", "crop", "stretch"])
    assert ok.all() and pixels["pad"].shape == (10, 32, 32)
    scores = {mode: _batched(scorer.score, stack, [])[0] for mode, stack in pixels.items()}
    np.testing.assert_allclose(scores["pad"][:4, 0], 0.5) and np.testing.assert_allclose(scores["pad"][4:, 0], HIGH)
    truth = np.zeros((10, 1), dtype=bool)
    table = counterfactual_table(truth, scores, "pad", ["Wide"], card["thresholds"]).set_index("geometry")
    for mode in ("pad -> crop", "pad -> stretch"):
        assert table.loc[mode, "changed"] == 4 and table.loc[mode, "to_positive"] == 4
        assert table.loc[mode, "to_negative"] == 0 and table.loc[mode, "changed_share"] == pytest.approx(0.4)
        assert table.loc[mode, "mean_abs_dp"] == pytest.approx(0.4 * (HIGH - 0.5))


def test_probe_finds_an_encoded_target_and_not_a_random_one() -> None:
    rng = np.random.default_rng(1)
    n = 200
    groups = [f"p{i // 2}" for i in range(n)]
    target = pd.Series(np.repeat(rng.choice(["PA", "AP"], n // 2), 2))
    encoded = rng.normal(size=(n, 8)) + (target == "AP").to_numpy()[:, None] * 1.5
    assert probe_auroc(encoded, target, groups, seed=0)[0] > 0.9
    assert abs(probe_auroc(rng.normal(size=(n, 8)), target, groups, seed=0)[0] - 0.5) < 0.15
    few = pd.Series(["PA"] * (n - 4) + ["AP"] * 4)
    auc, classes, reason = probe_auroc(encoded, few, groups, seed=0)
    assert np.isnan(auc) and classes == 1 and "fewer than two classes" in reason
