"""Coverage of the macro AUROC interval by simulation at the NIH sample's sizes (issue 18): 14 findings with the NIH
sample's patient prevalences, patients with NIH-like numbers of correlated images, true AUROCs known. The old macro
interval (over every defined finding, each 'too few' or not) misses the truth far more often than 5 %; the macro is
now given an interval only when every finding in it passes the minimum-sample rule, else 'macro_eligible' gives the
mean over the findings that pass, and those intervals cover at about the nominal rate."""

from __future__ import annotations

import numpy as np
import pytest

from chestxray.data.labels import NIH14
from chestxray.evaluation.metrics import MACRO_ELIGIBLE, summarize
from chestxray.evaluation.sample_rule import MIN_PATIENTS
from chestxray.evaluation.simulate import NIH_PATIENT_PREVALENCE, nih_like_images, signal_for, simulate

LABELS = list(NIH14)
TRUE_AUROC = np.linspace(0.6, 0.8, len(LABELS))  # each finding's population AUROC


def _coverage(n_patients: int, datasets: int, seed: int) -> dict[str, list[bool]]:
    """Per interval kind, whether each given interval held the true mean AUROC of the findings it averages."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {"old": [], "macro": [], MACRO_ELIGIBLE: []}
    for r in range(datasets):
        sim = simulate(rng, nih_like_images(rng, n_patients), np.array(NIH_PATIENT_PREVALENCE),
                       signal_for(TRUE_AUROC), rho=0.5, models=1)
        probs, ids = 1 / (1 + np.exp(-sim.scores[0])), sim.codes.tolist()
        old = summarize(sim.y, probs, LABELS, ids, n_boot=100, seed=r, min_patients=0).row("macro").auroc
        defined = [j for j in range(len(LABELS)) if 0 < sim.y[:, j].sum() < len(sim.y)]
        hits["old"].append(bool(old.low <= TRUE_AUROC[defined].mean() <= old.high))
        summary = summarize(sim.y, probs, LABELS, ids, n_boot=100, seed=r)
        rows = {row.name: row for row in summary.rows}
        eligible = [j for j in defined if min(rows[LABELS[j]].positive_patients,
                                              rows[LABELS[j]].negative_patients) >= MIN_PATIENTS]
        macro = rows["macro"].auroc
        assert (macro.low is not None) == (len(eligible) == len(defined))  # an interval only over eligible findings
        assert (MACRO_ELIGIBLE in rows) == (0 < len(eligible) < len(defined))
        for name, cols in (("macro", defined), (MACRO_ELIGIBLE, eligible)):
            if name in rows and rows[name].auroc.low is not None:
                iv = rows[name].auroc
                hits[name].append(bool(iv.low <= TRUE_AUROC[cols].mean() <= iv.high))
    return hits


@pytest.mark.parametrize("n_patients,given_at_least,old_at_most,new_at_least",
                         [(45, 30, 0.8, 0.75), (100, 90, 0.9, 0.88)])
def test_macro_intervals_cover_at_nih_sample_sizes(n_patients: int, given_at_least: int, old_at_most: float,
                                                   new_at_least: float) -> None:
    """45 patients (about the NIH sample's test split: 226 patients, a fifth for test) and 100 patients, 100
    datasets each, 100 bootstrap replicates. Measured with these seeds: the old interval covers 0.63 / 0.86, the
    new ones 0.81 (53 given) / 0.93 (100 given); over four more seeds at 45 patients 0.745 vs 0.84. The eligible
    intervals still fall short of 0.95 at 45 patients with NIH-like clusters (docs/statistics.md says so)."""
    hits = _coverage(n_patients, 100, seed=n_patients)
    given = hits["macro"] + hits[MACRO_ELIGIBLE]
    assert np.mean(hits["old"]) <= old_at_most
    assert len(given) >= given_at_least and np.mean(given) >= new_at_least
    assert np.mean(given) > np.mean(hits["old"])
