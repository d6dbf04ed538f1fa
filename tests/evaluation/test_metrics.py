"""Metrics agree with scikit-learn; bootstrap CIs resample patients, contain the estimate and narrow with n."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import (
    confusion_matrix as sk_confusion,
)

from chestxray.errors import DataError
from chestxray.evaluation import metrics as m


def _task(n: int, n_labels: int, seed: int, images_per_patient: int = 2):
    """Scores that carry signal, labels with ~20% prevalence, patients holding several images each."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_labels)) < 0.2).astype(np.uint8)
    s = 1 / (1 + np.exp(-(rng.normal(size=(n, n_labels)) + 1.5 * y - 1)))
    patients = [f"P{i // images_per_patient}" for i in range(n)]
    return y, np.round(s, 2), patients  # rounding makes ties, which the vectorised code must handle like sklearn


def test_point_metrics_agree_with_sklearn() -> None:
    y, s, _ = _task(400, 1, seed=1)
    y, s = y[:, 0], s[:, 0]
    assert m.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    pred = (s >= 0.4).astype(int)
    c = m.threshold_counts(y, s, 0.4)
    assert c.sensitivity == pytest.approx(recall_score(y, pred))
    assert c.specificity == pytest.approx(recall_score(1 - y, 1 - pred))
    assert c.precision == pytest.approx(precision_score(y, pred))
    assert c.f1 == pytest.approx(f1_score(y, pred))
    assert c.accuracy == pytest.approx(accuracy_score(y, pred))
    assert (m.confusion_matrix(y, s, 0.4) == sk_confusion(y, pred)).all()
    assert (c.fn, c.fp) == (int(((y == 1) & (pred == 0)).sum()), int(((y == 0) & (pred == 1)).sum()))


def test_weighted_curves_equal_sklearn_on_repeated_rows() -> None:
    y, s, _ = _task(300, 1, seed=2)
    y, s = y[:, 0], s[:, 0]
    weights = np.random.default_rng(3).integers(0, 4, size=(6, len(y)))
    fast_roc, fast_pr = m.weighted_auroc(y, s, weights), m.weighted_auprc(y, s, weights)
    for k, w in enumerate(weights):
        rows = np.repeat(np.arange(len(y)), w)  # a bootstrap replicate is the data with rows repeated
        assert fast_roc[k] == pytest.approx(roc_auc_score(y[rows], s[rows]), abs=1e-12)
        assert fast_pr[k] == pytest.approx(average_precision_score(y[rows], s[rows]), abs=1e-12)


def test_summary_matches_sklearn_macro_and_micro() -> None:
    y, s, patients = _task(500, 4, seed=4)
    summary = m.summarize(y, s, ["a", "b", "c", "d"], patients, n_boot=50)
    for j, name in enumerate("abcd"):
        assert summary.row(name).auroc.value == pytest.approx(roc_auc_score(y[:, j], s[:, j]))
        assert summary.row(name).auprc.value == pytest.approx(average_precision_score(y[:, j], s[:, j]))
    assert summary.row("macro").auroc.value == pytest.approx(roc_auc_score(y, s, average="macro"))
    assert summary.row("micro").auroc.value == pytest.approx(roc_auc_score(y, s, average="micro"))
    assert summary.row("micro").auprc.value == pytest.approx(average_precision_score(y, s, average="micro"))
    normal = summary.row("normal")
    assert normal.positives == int((y.sum(1) == 0).sum())
    assert normal.auroc.value == pytest.approx(roc_auc_score(y.sum(1) == 0, 1 - s.max(1)))


def test_patient_bootstrap_moves_a_patients_images_together() -> None:
    patients = ["p1", "p1", "p2", "p3", "p3", "p3", "p4"]
    counts = m.bootstrap_counts(patients, 500, np.random.default_rng(0))
    assert counts.shape == (500, 7)
    assert (counts[:, 0] == counts[:, 1]).all()
    assert (counts[:, 3] == counts[:, 4]).all() and (counts[:, 4] == counts[:, 5]).all()
    # 4 patients drawn per replicate: image totals are sums of whole patients, never a lone image of p1 or p3
    per_patient = counts[:, [0, 2, 3, 6]]
    assert (per_patient.sum(1) == 4).all()
    assert not (counts[:, 0] == counts[:, 2]).all()  # different patients do move independently
    again = m.bootstrap_counts(patients, 500, np.random.default_rng(0))
    assert (again == counts).all()  # seeded


def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (100, 1600):
        y, s, patients = _task(n, 2, seed=5)
        summary = m.summarize(y, s, ["a", "b"], patients, n_boot=300, seed=1)
        for name in ("a", "b", "macro", "micro"):
            for iv in (summary.row(name).auroc, summary.row(name).auprc):
                assert iv.low <= iv.value <= iv.high
        widths.append(summary.row("a").auroc.high - summary.row("a").auroc.low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16) = 1/4 expected


def test_patient_resampling_widens_ci_when_patients_repeat_images() -> None:
    """Images copied within a patient carry no new information: the patient bootstrap must not be fooled."""
    y, s, _ = _task(200, 1, seed=6)
    y4, s4 = np.repeat(y, 4, axis=0), np.repeat(s, 4, axis=0)
    by_patient = m.summarize(y4, s4, ["a"], [f"P{i // 4}" for i in range(800)], n_boot=300).row("a").auroc
    by_image = m.summarize(y4, s4, ["a"], [f"I{i}" for i in range(800)], n_boot=300).row("a").auroc
    assert (by_patient.high - by_patient.low) > 1.5 * (by_image.high - by_image.low)


def test_finding_without_positives_is_na_with_reason_and_left_out_of_means() -> None:
    y, s, patients = _task(200, 3, seed=7)
    y[:, 1] = 0
    summary = m.summarize(y, s, ["a", "none", "c"], patients, thresholds={"a": 0.5, "none": 0.5, "c": 0.5}, n_boot=50)
    row = summary.row("none")
    assert row.auroc.value is None and row.auroc.low is None
    assert "no positives" in row.auroc.reason and "no positives" in row.note
    assert row.counts.sensitivity is None and row.counts.fn == 0
    macro = summary.row("macro")
    assert macro.auroc.value == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in (0, 2)]))
    assert "2 of 3" in macro.note
    frame = summary.to_frame()
    assert frame.loc[frame.finding == "none", "auroc"].isna().all()
    text = json.dumps(summary.to_dict(), allow_nan=False)  # no NaN anywhere in the JSON
    assert "no positives among 200 images" in text


def test_no_negatives_is_na_too() -> None:
    y = np.ones(10, dtype=int)
    assert m.auroc(y, np.linspace(0, 1, 10)) is None
    assert m.undefined_reason(y) == "no negatives among 10 images"


def test_calibration_bins_match_sklearn_and_ece() -> None:
    y, s, _ = _task(1000, 1, seed=8)
    bins = m.calibration_bins(y, s, n_bins=10)
    frac, mean = calibration_curve(y[:, 0], s[:, 0], n_bins=10, strategy="uniform")
    ok = bins.counts > 0
    assert np.allclose(bins.frac_pos[ok], frac) and np.allclose(bins.mean_prob[ok], mean)
    expected = np.sum(bins.counts[ok] / bins.counts.sum() * np.abs(frac - mean))
    assert bins.ece == pytest.approx(expected)
    perfect = m.expected_calibration_error(np.r_[np.zeros(50), np.ones(50)], np.r_[np.zeros(50), np.ones(50)])
    assert perfect == 0.0


def test_errors_state_the_shapes() -> None:
    with pytest.raises(DataError, match=r"shape \(5,\).*shape \(4,\)"):
        m.auroc(np.zeros(5), np.zeros(4))
    with pytest.raises(DataError, match="only 0/1"):
        m.check_arrays(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(DataError, match="non-finite"):
        m.check_arrays(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(DataError, match="3 patient ids for 4 images"):
        m.summarize(np.zeros((4, 1)), np.zeros((4, 1)), ["a"], ["p"] * 3)


def test_single_positive_patient_finding_keeps_macro_on_one_rule_and_gets_no_interval() -> None:
    """A finding with one positive patient: the plain bootstrap loses it in ~37% of replicates, so a macro over
    'whichever findings are defined' would mix rules; stratified resampling keeps it defined in every replicate.
    The finding fails the minimum-sample rule, so it and the macro that contains it get no interval, and the
    'macro_eligible' row gives the mean with its interval over the two findings that pass."""
    y, s, patients = _task(600, 3, seed=11, images_per_patient=3)
    y[:, 2] = 0
    y[[30, 31], 2] = 1  # two images of one patient (P10): a single positive patient
    summary = m.summarize(y, s, ["a", "b", "rare"], patients, n_boot=400, seed=2)
    rare = summary.row("rare")
    assert rare.auroc.value == pytest.approx(roc_auc_score(y[:, 2], s[:, 2]))
    assert rare.auroc.low is None and rare.auroc.high is None
    assert rare.auroc.reason == "too few positive patients (1 < 10) for an interval"
    assert rare.auprc.reason == rare.auroc.reason and (rare.positive_patients, rare.negative_patients) == (1, 200)
    macro = summary.row("macro")
    assert macro.auroc.value == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(3)]))
    assert macro.auroc.low is None and "1 of the 3 findings in the mean have too few patients (rare)" in \
        macro.auroc.reason and "'macro_eligible' for the 2 that do" in macro.auroc.reason
    eligible = summary.row(m.MACRO_ELIGIBLE)
    assert eligible.auroc.value == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(2)]))
    assert eligible.auroc.replicates == 400  # every replicate has all findings defined: one rule for all
    assert eligible.auroc.low <= eligible.auroc.value <= eligible.auroc.high
    assert eligible.note.startswith("mean over the 2 of 3 findings with at least 10 positive and 10 negative "
                                    "patients: a, b")
    assert summary.row("a").auroc.replicates == 400
    boot = summary.to_dict()["bootstrap"]
    assert boot["scheme"].startswith("stratified patient bootstrap") and boot["min_patients"] == 10
    assert "10 positive and 10 negative patients" in boot["rule"]
    assert boot["strata"] >= 2


def test_too_few_negative_patients_get_no_interval_either() -> None:
    """The rule counts both classes: a finding that nearly every patient has (3 negative patients) gets no interval,
    and when every finding passes there is one macro row, with its interval, and no 'macro_eligible'."""
    y, s, patients = _task(600, 2, seed=3, images_per_patient=3)
    common = m.summarize(np.c_[y, np.ones(600, np.uint8)], np.c_[s, s[:, :1]], ["a", "b", "common"], patients,
                         n_boot=100)
    y_common = np.ones(600, np.uint8)
    y_common[:9] = 0  # patients P0, P1, P2 have only negative images for it
    summary = m.summarize(np.c_[y, y_common], np.c_[s, s[:, :1]], ["a", "b", "common"], patients, n_boot=100)
    row = summary.row("common")
    assert (row.positive_patients, row.negative_patients) == (197, 3)
    assert row.auroc.low is None and row.auroc.reason == "too few negative patients (3 < 10) for an interval"
    assert common.row("common").auroc.value is None  # no negatives at all: undefined, not 'too few'
    both = m.summarize(y[:, :2], s[:, :2], ["a", "b"], patients, n_boot=100)
    assert [r.name for r in both.rows] == ["a", "b", "macro", "micro", "normal"]
    assert both.row("macro").auroc.low is not None


def test_plain_bootstrap_would_lose_the_single_positive_patient() -> None:
    """The failure the stratification prevents, shown on the same data: plain patient resampling drops P10."""
    _, _, patients = _task(600, 1, seed=11, images_per_patient=3)
    counts = m.bootstrap_counts(patients, 400, np.random.default_rng(2))
    lost = (counts[:, 30] == 0).mean()
    assert 0.25 < lost < 0.5  # about (1 - 1/200)^200 = 0.37


def test_strata_keep_every_property_present_in_every_replicate() -> None:
    rng = np.random.default_rng(12)
    props = rng.random((300, 8)) < np.array([0.003, 0.01, 0.02, 0.05, 0.2, 0.5, 0.9, 0.997])
    props[:, 0] = False
    props[[5, 6], 0] = True
    props[5, 1] = True  # overlapping rare properties
    strata = m.patient_strata(props)
    counts = m.stratified_patient_counts(strata, 500, np.random.default_rng(0))
    assert (counts.sum(1) == 300).all()  # each replicate draws as many patients as there are
    for k in range(props.shape[1]):
        if props[:, k].any():
            assert (counts[:, props[:, k]].sum(1) > 0).all(), f"property {k} lost in some replicate"
    for st in np.unique(strata):  # stratum sizes are fixed across replicates
        assert (counts[:, strata == st].sum(1) == (strata == st).sum()).all()
