"""Obuchowski's clustered AUROC test: it is DeLong's test with one image per patient, it equals its pairwise
definition, and by simulation (fixed seeds) equal models with correlated images per patient are called different
at about the nominal 5 % where DeLong's image-level test is not; the macro test likewise; and the minimum-sample
rule replaces the test where a finding has too few patients (issue 18)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chestxray.evaluation import statistics as st
from chestxray.evaluation.compare_runs import compare_predictions
from chestxray.evaluation.simulate import simulate, true_auroc


def _clustered(seed: int, n_patients: int = 100, max_images: int = 6, rho: float = 0.5, **kw):
    rng = np.random.default_rng(seed)
    return simulate(rng, rng.integers(1, max_images + 1, n_patients), rho=rho, **kw)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_one_image_per_patient_is_delong(seed: int, ties: bool) -> None:
    sim = _clustered(seed, n_patients=150, max_images=1, rho=0.0)
    y, a, b = sim.y[:, 0], sim.scores[0, :, 0], sim.scores[1, :, 0]
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    clustered, delong = st.clustered_test(y, a, b, sim.codes), st.delong_test(y, a, b)
    assert np.allclose(clustered.cov, delong.cov, rtol=1e-12, atol=1e-15)
    assert clustered.p == pytest.approx(delong.p, rel=1e-10) and clustered.diff == delong.diff


@pytest.mark.parametrize("seed", [3, 4])
def test_fast_clustered_equals_its_pairwise_definition(seed: int) -> None:
    sim = _clustered(seed, rho=0.8, prevalence=0.4)
    y, a, b = sim.y[:, 0], np.round(sim.scores[0, :, 0], 1), np.round(sim.scores[1, :, 0], 1)
    ids = [f"patient-{c}" for c in sim.codes]
    fast, direct = st.clustered_test(y, a, b, ids), st.clustered_direct(y, a, b, ids)
    assert np.allclose(fast.cov, direct.cov, rtol=0, atol=1e-12) and fast.p == pytest.approx(direct.p, abs=1e-12)
    assert fast.auc_a == pytest.approx(np.mean((a[y == 1][:, None] > a[y == 0]) + 0.5 * (a[y == 1][:, None] ==
                                                                                            a[y == 0])))
    assert fast.se > st.delong_test(y, a, b).se  # correlated images: DeLong's standard error is too small


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_equal_models_are_called_different_at_the_nominal_rate(rho: float) -> None:
    """100 patients with 1-6 images, 30 % of patients with the finding, equally good models with within-patient
    error correlation rho: 1,000 datasets. The clustered test rejects at p < 0.05 in 3-7.5 % of them (binomial
    SE 0.7 %); DeLong's image-level test in far more (the issue measured 22 % / 31 % with its own design)."""
    rng = np.random.default_rng(int(rho * 10))
    clustered = delong = 0
    for _ in range(1000):
        sim = simulate(rng, rng.integers(1, 7, 100), prevalence=0.3, signal=1.0, rho=rho)
        y, a, b = sim.y[:, 0], sim.scores[0, :, 0], sim.scores[1, :, 0]
        clustered += st.clustered_test(y, a, b, sim.codes).p < 0.05
        delong += st.delong_test(y, a, b).p < 0.05
    assert 0.03 <= clustered / 1000 <= 0.075
    assert delong / 1000 >= 0.12


def test_a_real_difference_is_found() -> None:
    """The same design with model a better (population AUROC 0.79 vs 0.69): the clustered test finds it mostly."""
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(200):
        sim = simulate(rng, rng.integers(1, 7, 100), prevalence=0.3, signal=np.array([1.0]), rho=0.5)
        a = sim.scores[0, :, 0] + 0.7 * sim.y[:, 0]  # model a: signal 1.7
        found += st.clustered_test(sim.y[:, 0], a, sim.scores[1, :, 0], sim.codes).p < 0.05
    assert true_auroc(1.7) - true_auroc(1.0) > 0.09 and found / 200 > 0.6


def test_macro_test_of_one_finding_is_the_finding_test() -> None:
    sim = _clustered(6, prevalence=np.array([0.3, 0.2]), rho=0.5)
    one = st.clustered_macro_test(sim.y, sim.scores[0], sim.scores[1], sim.codes, [1])
    single = st.clustered_test(sim.y[:, 1], sim.scores[0, :, 1], sim.scores[1, :, 1], sim.codes)
    assert one.p == pytest.approx(single.p, rel=1e-12) and one.se == pytest.approx(single.se, rel=1e-12)


def test_macro_test_is_calibrated() -> None:
    """Three findings on the same 150 patients (1-6 images, rho 0.8), equal models: 400 datasets, rejection at
    p < 0.05 within 2.5-9 %."""
    rng = np.random.default_rng(7)
    rejected = 0
    for _ in range(400):
        sim = simulate(rng, rng.integers(1, 7, 150), prevalence=np.array([0.3, 0.2, 0.15]), signal=1.0, rho=0.8)
        rejected += st.clustered_macro_test(sim.y, sim.scores[0], sim.scores[1], sim.codes, [0, 1, 2]).p < 0.05
    assert 0.025 <= rejected / 400 <= 0.09


@pytest.mark.parametrize("positive_patients", [1, 3])
def test_too_few_positive_patients_get_words_not_a_p_value(positive_patients: int) -> None:
    """With 1 positive patient equal models were 'significantly different' 77 % of the time (issue 18): now the
    comparison gives no p-value and no interval, only the rule's words."""
    rng = np.random.default_rng(positive_patients)
    sim = simulate(rng, rng.integers(1, 7, 100), prevalence=0.0, rho=0.5)
    y = sim.y[:, 0].copy()
    y[np.isin(sim.codes, np.arange(positive_patients))] = 1
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(y))], "patient_id": sim.codes.astype(str),
                          "Edema": y})
    a, b = frame.assign(p_Edema=sim.scores[0, :, 0]), frame.assign(p_Edema=sim.scores[1, :, 0])
    row = compare_predictions(a, b, ["Edema"], n_boot=50).table.iloc[0]
    assert np.isnan(row["p"]) and np.isnan(row["low"]) and np.isnan(row["high"]) and not np.isnan(row["diff"])
    assert row["test"] == f"too few positive patients ({positive_patients} < 10) for a test"
