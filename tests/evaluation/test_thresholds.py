"""Thresholds: each method's choice is checked against a brute-force search; they are stored in the card."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chestxray.errors import ConfigError
from chestxray.inference.stream import threshold_tta
from chestxray.evaluation.thresholds import (
    FALLBACK,
    apply_thresholds,
    choose_threshold,
    choose_thresholds,
    parse_method,
    store_thresholds,
)
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
    store_thresholds(folder, {"a": 0.3, "b": 0.7}, "f1")
    stored = read_card(folder)
    assert stored["thresholds"] == {"a": 0.3, "b": 0.7}
    assert stored["threshold_method"] == "f1 on val"
    frame = pd.DataFrame({"p_a": [0.2, 0.3, np.nan], "p_b": [0.9, 0.1, np.nan]})
    out = apply_thresholds(frame, labels, stored["thresholds"])
    assert out["pred_a"].tolist()[:2] == [0, 1] and out["pred_b"].tolist()[:2] == [1, 0]
    assert out["pred_a"].isna().iloc[2]  # an unreadable image gets no decision, not a 'negative'
    with pytest.raises(ConfigError, match="no threshold stored"):
        apply_thresholds(frame, labels, {"a": 0.5})


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
