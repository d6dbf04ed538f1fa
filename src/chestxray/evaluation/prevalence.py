"""A site's prevalence without labels: the EM method of Saerens, Latinne & Decaestecker (2002), with a bootstrap.

Under label shift (p(x | y) unchanged, p(y) changed) the posterior at the new site is the old one re-weighted by the
ratio of priors; EM alternates that re-weighting with the mean of the re-weighted posteriors until the prior stops
moving. It assumes the posteriors are calibrated for the source prior, so they are first recalibrated on the
bundle's own validation split (Alexandari et al. 2020: bias-corrected calibration then EM is hard to beat).
Multi-label tasks run one binary EM per label (labels are not mutually exclusive); a multi-class task runs the
K-class EM. The interval comes from re-running EM on patient-bootstrap replicates of the site's images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chestxray.evaluation.bootstrap import bootstrap_counts

MAX_ITER = 1000
TOL = 1e-8
PRIOR_FLOOR = 1e-6  # keeps a prior off 0 and 1 so the re-weighting stays finite


def em_prior_binary(p: np.ndarray, source: float, weights: np.ndarray | None = None) -> float:
    """The prior of one binary label at the new site from source-calibrated posteriors p (N,) (Saerens EM)."""
    p = np.clip(np.asarray(p, float), PRIOR_FLOOR, 1 - PRIOR_FLOOR)
    w = np.ones_like(p) if weights is None else np.asarray(weights, float)
    source = float(np.clip(source, PRIOR_FLOOR, 1 - PRIOR_FLOOR))
    prior = float(np.average(p, weights=w))
    for _ in range(MAX_ITER):
        num = p * prior / source
        post = num / (num + (1 - p) * (1 - prior) / (1 - source))
        new = float(np.clip(np.average(post, weights=w), PRIOR_FLOOR, 1 - PRIOR_FLOOR))
        if abs(new - prior) < TOL:
            return new
        prior = new
    return prior


def em_prior_multiclass(p: np.ndarray, source: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Class priors (K,) at the new site from source-calibrated softmax posteriors p (N, K) (Saerens EM)."""
    p = np.clip(np.asarray(p, float), PRIOR_FLOOR, 1.0)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, float)
    source = np.clip(np.asarray(source, float), PRIOR_FLOOR, 1.0)
    prior = np.average(p, axis=0, weights=w)
    for _ in range(MAX_ITER):
        post = p * prior / source
        post /= post.sum(1, keepdims=True)
        new = np.clip(np.average(post, axis=0, weights=w), PRIOR_FLOOR, 1.0)
        new /= new.sum()
        if np.abs(new - prior).max() < TOL:
            return new
        prior = new
    return prior


def em_priors(p: np.ndarray, source: Sequence[float], multiclass: bool,
              weights: np.ndarray | None = None) -> np.ndarray:
    """New-site priors (L,) from posteriors (N, L): K-class EM when multiclass, else one binary EM per label."""
    p = np.asarray(p, float)
    if multiclass:
        return em_prior_multiclass(p, np.asarray(source), weights)
    return np.array([em_prior_binary(p[:, j], source[j], weights) for j in range(p.shape[1])])


@dataclass(frozen=True)
class PrevalenceEstimate:
    """Source priors, the EM estimate for the site, and its patient-bootstrap percentile interval, per label."""

    labels: list[str]
    source: list[float]
    estimate: list[float]
    low: list[float]
    high: list[float]
    n_images: int
    n_patients: int
    n_boot: int
    ci: float
    mean_probability: list[float]  # the naive estimate: mean posterior without EM

    def to_dict(self) -> dict[str, Any]:
        return {"method": "EM (Saerens et al. 2002) on source-calibrated probabilities",
                "interval": f"{self.ci:.0%} percentile interval over {self.n_boot} patient-bootstrap replicates",
                **{k: getattr(self, k) for k in ("labels", "source", "estimate", "low", "high", "n_images",
                                                  "n_patients", "n_boot", "ci", "mean_probability")}}


def estimate_prevalence(p: Any, source: Sequence[float], labels: Sequence[str], patient_ids: Sequence[Any],
                        multiclass: bool = False, n_boot: int = 200, ci: float = 0.95,
                        seed: int = 0) -> PrevalenceEstimate:
    """EM priors of the site's images (posteriors p (N, L) calibrated for `source`) with a patient bootstrap."""
    p = np.asarray(p, float)
    point = em_priors(p, source, multiclass)
    counts = bootstrap_counts(patient_ids, n_boot, np.random.default_rng(seed))
    reps = np.array([em_priors(p, source, multiclass, weights=c) for c in counts if c.sum() > 0])
    lo, hi = np.percentile(reps, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return PrevalenceEstimate(list(labels), [float(s) for s in source], point.tolist(), lo.tolist(), hi.tolist(),
                              len(p), len(set(map(str, patient_ids))), n_boot, ci, p.mean(0).tolist())


def prior_step(source: Sequence[float], target: Sequence[float], labels: Sequence[str],
               multiclass: bool) -> dict[str, Any]:
    """The site-profile map that moves posteriors from the source priors to the site's."""
    if multiclass:
        return {"kind": "softmax_prior", "source": [float(x) for x in source], "target": [float(x) for x in target]}
    return {"kind": "prior", "params": {n: {"source": float(s), "target": float(t)}
                                        for n, s, t in zip(labels, source, target)}}
