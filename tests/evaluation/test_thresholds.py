"""Thresholds: each method's choice is checked against a brute-force search; they are stored in the card."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chestxray.errors import ConfigError
from chestxray.evaluation.thresholds import (
    FALLBACK,
    apply_thresholds,
    choose_threshold,
    choose_thresholds,
    parse_method,
    store_thresholds,
    thresholds_from_frame,
)
from chestxray.inference.outputs import decision_thresholds
from chestxray.inference.stream import threshold_tta
from chestxray.models import build_model
from chestxray.models.bundle import read_card, save_bundle


def _val(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * y - 1))), 3)
    return y, s


def _rates(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float, float]:
    pred = s >= t
    tp, fp = (pred & (y == 1)).sum(), (pred & (y == 0)).sum()
    fn, tn = (~pred & (y == 1)).sum(), (~pred & (y == 0)).sum()
    f1 = 2 * tp / (2 * tp + fp + fn)
    return tp / (tp + fn), tn / (tn + fp), f1


def test_youden_f1_and_sensitivity_match_brute_force() -> None:
    y, s = _val()
    candidates = np.unique(s)
    sens_spec = {t: _rates(y, s, t) for t in candidates}
    best_j = max(sens_spec[t][0] + sens_spec[t][1] - 1 for t in candidates)
    best_f1 = max(v[2] for v in sens_spec.values())
    t_j = choose_threshold(y, s, "youden")
    t_f1 = choose_threshold(y, s, "f1")
    assert sum(_rates(y, s, t_j)[:2]) - 1 == pytest.approx(best_j)
    assert _rates(y, s, t_f1)[2] == pytest.approx(best_f1)
    t_s = choose_threshold(y, s, "sensitivity:0.9")
    sens, spec, _ = _rates(y, s, t_s)
    assert sens >= 0.9
    best_spec = max(v[1] for v in sens_spec.values() if v[0] >= 0.9)
    assert spec == pytest.approx(best_spec)  # the most specific threshold that keeps 90% sensitivity


def test_label_without_positives_falls_back_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    y, s = _val()
    ys = np.stack([y, np.zeros_like(y)], axis=1)
    out = choose_thresholds(ys, np.stack([s, s], axis=1), ["a", "empty"])
    assert out["empty"] == FALLBACK
    assert "empty" in caplog.text and "no positives" in caplog.text


def test_parse_method_rejects_bad_names() -> None:
    assert str(parse_method("Sensitivity:0.95")) == "sensitivity:0.95"
    with pytest.raises(ConfigError, match="unknown threshold method 'youdn'"):
        parse_method("youdn")
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        parse_method("sensitivity:90")


def test_store_and_apply_thresholds(tmp_path) -> None:
    labels = ["a", "b"]
    card = {"architecture": "cnn-tiny", "num_labels": 2, "in_chans": 1, "image_size": 32,
            "normalization": "gray", "labels": labels}
    folder = save_bundle(tmp_path / "bundle", build_model("cnn-tiny", num_labels=2), card)
    store_thresholds(folder, {"a": -0.5, "b": 25.0}, "f1")  # log-odds
    stored = read_card(folder)
    assert stored["threshold_logits"] == {"a": -0.5, "b": 25.0}  # what decisions apply
    assert stored["thresholds"] == pytest.approx({"a": 1 / (1 + np.exp(0.5)), "b": 1 - 1.4e-11}, abs=1e-12)
    assert stored["threshold_method"] == "f1 on val"
    assert decision_thresholds(stored) == {"a": -0.5, "b": 25.0}
    # logits of 20 and 30 are both p = 1.0 in float32; the log-odds threshold of 25 still tells them apart
    frame = pd.DataFrame({"p_a": [0.2, 0.5, np.nan], "p_b": [1.0, 1.0, np.nan],
                          "logit_a": [-1.0, 0.0, np.nan], "logit_b": [30.0, 20.0, np.nan]})
    out = apply_thresholds(frame, labels, decision_thresholds(stored))
    assert out["pred_a"].tolist()[:2] == [0, 1] and out["pred_b"].tolist()[:2] == [1, 0]
    assert out["pred_a"].isna().iloc[2]  # an unreadable image gets no decision, not a 'negative'
    with pytest.raises(ConfigError, match="no threshold stored"):
        apply_thresholds(frame, labels, {"a": 0.5})


def test_cards_and_frames_from_before_log_odds_still_decide_as_they_did() -> None:
    """A card with probability thresholds only, a frame with p_ columns only: p >= t, through its log-odds."""
    old_card = {"thresholds": {"a": 0.3}}
    assert decision_thresholds(old_card)["a"] == pytest.approx(np.log(0.3 / 0.7))
    frame = pd.DataFrame({"p_a": [0.2, 0.3, 0.9]})
    assert apply_thresholds(frame, ["a"], decision_thresholds(old_card))["pred_a"].tolist() == [0, 1, 1]
    assert decision_thresholds({"thresholds": None}) is None


def test_thresholds_between_saturated_scores_are_meaningful() -> None:
    """Validation logits 20–40 (all float32 probabilities exactly 1.0): the threshold falls between the classes."""
    y = np.array([0, 0, 0, 1, 1, 1])
    logits = np.array([20.0, 21.0, 22.0, 30.0, 35.0, 40.0])
    assert (1 / (1 + np.exp(-logits.astype(np.float32)))).min() == np.float32(1.0)
    t = choose_threshold(y, logits, "youden")
    assert 22.0 < t <= 30.0
    assert choose_threshold(y, logits, "sensitivity:1.0") == 30.0
    frame = pd.DataFrame({"a": y, "p_a": np.ones(6), "logit_a": logits})
    assert thresholds_from_frame(frame, ["a"]) == {"a": t}
    assert apply_thresholds(frame, ["a"], {"a": t})["pred_a"].tolist() == y.tolist()


def test_thresholds_carry_their_tta_and_a_mismatch_is_refused(tmp_path) -> None:
    card = {"architecture": "cnn-tiny", "num_labels": 1, "in_chans": 1, "image_size": 32,
            "normalization": "gray", "labels": ["a"]}
    folder = save_bundle(tmp_path / "bundle", build_model("cnn-tiny", num_labels=1), card)
    assert threshold_tta(read_card(folder), None) == "none"  # no thresholds yet: no constraint
    assert threshold_tta(read_card(folder), "crop") == "crop"
    store_thresholds(folder, {"a": 0.4}, "youden", tta="hflip")
    stored = read_card(folder)
    assert stored["threshold_tta"] == "hflip"
    assert threshold_tta(stored, None) == "hflip"  # applied by default
    assert threshold_tta(stored, "hflip") == "hflip"
    with pytest.raises(ConfigError, match="chosen on validation scores made with --tta hflip"):
        threshold_tta(stored, "none")
    assert threshold_tta({"thresholds": {"a": 0.5}}, None) == "none"  # cards from before: thresholds made without TTA
