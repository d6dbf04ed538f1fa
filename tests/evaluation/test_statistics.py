"""DeLong (fast midrank) equals the pairwise definition with ties; paired bootstrap agrees in sign; Holm is Holm."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from chestxray.errors import DataError
from chestxray.evaluation import statistics as st


def _pair(n: int, seed: int, gap: float, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    base = rng.normal(size=n)
    a = base + 1.2 * y + 0.5 * rng.normal(size=n)
    b = base + (1.2 - gap) * y + 0.5 * rng.normal(size=n)
    if ties:  # coarse scores: many ties within and across classes
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


@pytest.mark.parametrize("seed,ties", [(0, True), (1, True), (2, False)])
def test_fast_delong_equals_structural_components_definition(seed: int, ties: bool) -> None:
    y, a, b = _pair(300, seed, gap=0.3, ties=ties)
    if ties:
        assert len(np.unique(a)) < len(a) / 3  # the case really has ties
    fast, direct = st.delong_test(y, a, b), st.delong_direct(y, a, b)
    assert fast.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert fast.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert np.allclose(fast.cov, direct.cov, rtol=0, atol=1e-9)
    assert fast.p == pytest.approx(direct.p, abs=1e-9) and fast.se == pytest.approx(direct.se, abs=1e-9)
    assert 0 < fast.p < 1


def test_fixed_arrays_known_values() -> None:
    """A hand-sized case: 3 positives, 4 negatives, ties across classes and models."""
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.4, 0.3, 0.2, 0.6])
    b = np.array([0.8, 0.5, 0.5, 0.5, 0.1, 0.2, 0.3])
    fast, direct = st.delong_test(y, a, b), st.delong_direct(y, a, b)
    assert fast.auc_a == pytest.approx((4 + 3.5 + 2.5) / 12) and fast.auc_b == pytest.approx((4 + 3.5 + 3.5) / 12)
    assert np.allclose(fast.cov, direct.cov, atol=1e-12)
    assert fast.p == pytest.approx(direct.p, abs=1e-12)


def test_identical_scores_give_p_one() -> None:
    y, a, _ = _pair(200, 3, gap=0.0)
    result = st.delong_test(y, a, a.copy())
    assert result.diff == 0 and result.p == 1.0
    assert st.delong_direct(y, a, a.copy()).p == 1.0


def test_paired_bootstrap_agrees_in_sign_with_delong_on_a_clear_case() -> None:
    y, a, b = _pair(600, 4, gap=0.9, ties=False)
    patients = [f"P{i // 2}" for i in range(len(y))]
    d = st.delong_test(y, a, b)
    boot = st.paired_bootstrap(y, a, b, patients, n_boot=300, seed=1)
    assert d.diff > 0 and d.p < 0.01
    assert 0 < boot.low[0] < d.diff < boot.high[0]  # excludes 0 on the same side as DeLong's z
    flipped = st.paired_bootstrap(y, b, a, patients, n_boot=300, seed=1)
    assert flipped.high[0] == pytest.approx(-boot.low[0]) and flipped.macro_low == pytest.approx(-boot.macro_high)


def test_holm_matches_the_step_down_rule() -> None:
    p = [0.01, 0.04, None, 0.03, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 with multipliers 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.5
    adjusted = st.holm(p)
    assert adjusted[2] is None
    assert [adjusted[i] for i in (0, 3, 1, 4)] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert st.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_delong_needs_both_classes() -> None:
    with pytest.raises(DataError, match="needs positives and negatives"):
        st.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
