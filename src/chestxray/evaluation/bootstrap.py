"""Patient bootstrap of AUROC/AUPRC: stratified resampling and curves computed for many replicates at once.

The rule (one for the estimate and every replicate): patients are resampled with replacement WITHIN strata
built so that every task defined on the full split (a finding with a positive and a negative image) keeps at
least one positive and one negative patient in every replicate (pROC's "stratified" bootstrap, generalised to
several findings). So a macro mean over the same fixed set of findings is defined in every replicate, as it is
for the estimate. A stratum holds patients that share a property (positive, or negative, for some finding);
stratum sizes stay fixed, which is what a stratified bootstrap means.

A replicate is a vector of per-patient counts; `SortedTask` turns counts into AUROC (Mann-Whitney with ties
counted one half) and average precision (scikit-learn's step sum) for a block of replicates with a few numpy
passes over the sorted scores (gather, cumulative sum), no Python loop over replicates or images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from chestxray.errors import ConfigError

SCHEME = ("stratified patient bootstrap: patients resampled with replacement within strata that keep, in every "
          "replicate, a positive and a negative patient for each finding defined on the split")


def patient_codes(patient_ids: Sequence[Any]) -> tuple[np.ndarray, int]:
    """Integer code per image for its patient (first-seen order) and the number of patients."""
    codes, uniques = pd.factorize(pd.Series(list(patient_ids), dtype=object), sort=False)
    return codes.astype(np.int64), len(uniques)


def patient_property(flags: np.ndarray, codes: np.ndarray, n_patients: int) -> np.ndarray:
    """(P,) bool: the patient has at least one image where `flags` (N,) is true."""
    return np.bincount(codes[flags.astype(bool)], minlength=n_patients) > 0


def patient_strata(properties: np.ndarray) -> np.ndarray:
    """Stratum id per patient (P,) such that each property (column of (P, K) bool) with any patient holds for
    every member of at least one stratum; resampling strata at fixed size then keeps each property present.

    Greedy from the rarest property: covered if a stratum already has only such patients; else its unassigned
    patients form a new stratum; else (all of them already sit in mixed strata) one of them moves out of its
    stratum into its own. Neither step uncovers an earlier property: a stratum that lost a member keeps only
    patients it had (still pure for what it covered) and, being mixed, had at least two. Patients left unassigned
    form one last stratum. Ids are 0..S-1 in order of creation, every stratum non-empty; no randomness.
    """
    properties = np.asarray(properties, dtype=bool)
    n_pat = properties.shape[0]
    stratum = np.full(n_pat, -1, dtype=np.int64)
    n_strata = 0
    for k in np.argsort(properties.sum(0), kind="stable"):
        have = properties[:, k]
        if not have.any():
            continue
        placed = stratum >= 0
        members_total = np.bincount(stratum[placed], minlength=n_strata)
        members_with = np.bincount(stratum[have & placed], minlength=n_strata)
        if ((members_with == members_total) & (members_total > 0)).any():
            continue
        free = have & ~placed
        if free.any():
            stratum[free] = n_strata
        else:  # every such patient sits in a stratum that also holds others (else it would be pure): move one
            stratum[np.flatnonzero(have)[0]] = n_strata
        n_strata += 1
    stratum[stratum < 0] = n_strata
    return np.unique(stratum, return_inverse=True)[1].astype(np.int64)


def stratified_patient_counts(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each patient is drawn in each replicate, drawing each stratum's size from it with replacement:
    int32 (n_boot, P). One stratum holding everyone is the plain patient bootstrap. n_boot < 1 is a ConfigError:
    every interval would silently be missing."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError(f"--n-boot {n_boot!r}: the bootstrap needs at least 1 replicate (1000 is the default; "
                          "fewer than a few hundred give unstable 95% intervals)")
    n_pat = strata.size
    if n_pat == 0:
        return np.zeros((n_boot, 0), dtype=np.int32)
    draws = np.empty((n_boot, n_pat), dtype=np.int64)
    col = 0
    for s in range(int(strata.max()) + 1):
        members = np.flatnonzero(strata == s)
        draws[:, col : col + members.size] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        col += members.size
    flat = (draws + np.arange(n_boot)[:, None] * n_pat).ravel()
    return np.bincount(flat, minlength=n_boot * n_pat).reshape(n_boot, n_pat).astype(np.int32)


def bootstrap_patient_counts(n_patients: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Plain (unstratified) patient bootstrap counts: int32 (n_boot, P)."""
    return stratified_patient_counts(np.zeros(n_patients, dtype=np.int64), n_boot, rng)


def bootstrap_counts(patient_ids: Sequence[Any], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each image enters each replicate when PATIENTS are drawn with replacement: int (n_boot, N).

    All images of a patient share the patient's count.
    """
    codes, n_pat = patient_codes(patient_ids)
    return bootstrap_patient_counts(n_pat, n_boot, rng)[:, codes]


class SortedTask:
    """One binary task (labels, scores, unit code per row) sorted once, scored for blocks of replicates.

    Negatives are summed per unit into the gaps between consecutive positives (two sparse unit x gap count
    matrices, for scores strictly below and for at-or-below, which differ only at ties), so one sparse product
    gives each replicate's negative weight per gap and a running sum over positives gives, for each positive,
    the weighted negatives scored below it. Work per replicate: one pass over the negatives (in the sparse
    product) and a few over the positives.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray, codes: np.ndarray, n_units: int | None = None) -> None:
        """n_units: the number of units the replicate counts cover (default: the highest code + 1); give it when
        the task holds a subset of the units (a finding annotated for some images only)."""
        y = np.asarray(y).ravel().astype(bool)
        s = np.asarray(score, dtype=np.float64).ravel()
        codes = np.asarray(codes).ravel()
        order = np.argsort(s[y], kind="stable")
        sp = s[y][order]
        self.pos_codes = codes[y][order]
        self.n_units = n_units if n_units is not None else (int(codes.max()) + 1 if codes.size else 0)
        n_gaps = sp.size + 1
        neg_s, neg_c = s[~y], codes[~y]
        shape = (n_gaps, self.n_units)
        ones = np.ones(neg_s.size)
        # gap g of a negative: how many positives score at or below it (below) / strictly below it (at or below)
        below_gap, upto_gap = np.searchsorted(sp, neg_s, side="right"), np.searchsorted(sp, neg_s, side="left")
        self.below = sparse.csr_matrix((ones, (below_gap, neg_c)), shape=shape)
        self.ties = bool((upto_gap != below_gap).any())
        self.upto = sparse.csr_matrix((ones, (upto_gap, neg_c)), shape=shape) if self.ties else self.below
        self.pos_below = np.searchsorted(sp, sp, side="left")  # positives scored strictly below each positive
        self.ties_pos = bool((self.pos_below != np.arange(sp.size)).any())
        self.size = y.size

    def curves(self, counts_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AUROC and average precision (B,) for unit counts given transposed, (units, B) float64 C-contiguous;
        NaN where a replicate lacks a class."""
        k = self.pos_codes.size
        wp = counts_t[self.pos_codes]  # (positives, B)
        below = running_sum(self.below @ counts_t)  # [i]: negatives scored below positive i; [k]: all negatives
        n_neg = below[k].copy()
        both = below[:k] + (running_sum(self.upto @ counts_t)[:k] if self.ties else below[:k])
        tp = running_sum(wp.copy())  # positives up to and including i, in ascending score order
        n_pos = tp[k - 1].copy() if k else np.zeros(counts_t.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            roc = np.einsum("ib,ib->b", wp, both) / (2.0 * n_pos * n_neg)
            tp -= wp
            tp = np.subtract(n_pos, tp[self.pos_below] if self.ties_pos else tp, out=tp)  # positives at or above
            fp = np.subtract(n_neg, below[:k])  # negatives scored at or above it
            fp += tp
            np.maximum(fp, 1.0, out=fp)
            np.divide(tp, fp, out=tp)  # precision; where no positive is at or above, wp is 0 and so is the term
            pr = np.einsum("ib,ib->b", wp, tp) / n_pos
        roc[(n_pos == 0) | (n_neg == 0)] = np.nan
        pr[n_pos == 0] = np.nan
        return roc, pr

    def replicates(self, counts: np.ndarray, budget: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
        """`curves` for unit counts (B, units) in blocks of about `budget` cells per (positives, B) array."""
        step = max(1, budget // max(self.pos_codes.size + 1, 1))
        parts = [self.curves(np.ascontiguousarray(counts[a : a + step].T, dtype=np.float64))
                 for a in range(0, len(counts), step)]
        if not parts:
            return np.zeros(0), np.zeros(0)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def running_sum(x: np.ndarray) -> np.ndarray:
    """Cumulative sum down axis 0, in place: one vectorised add per row across all replicates (numpy's own
    cumsum along axis 0 of a C-ordered array is strided and several times slower here)."""
    for i in range(1, len(x)):
        np.add(x[i], x[i - 1], out=x[i])
    return x


def weighted_auroc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one finding under each row of integer sample weights (B, N); NaN where a row lacks a class.

    Equals the AUROC of the data with each image repeated `weight` times (ties count one half).
    """
    y = np.asarray(y_true).ravel()
    return SortedTask(y, y_score, np.arange(y.size)).replicates(np.atleast_2d(weights))[0]


def weighted_auprc(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision of one finding under each row of sample weights (B, N); NaN where a row has no positives."""
    y = np.asarray(y_true).ravel()
    return SortedTask(y, y_score, np.arange(y.size)).replicates(np.atleast_2d(weights))[1]
