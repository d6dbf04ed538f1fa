"""Scores where the truth is known, for checking that tests and intervals are calibrated (the tests and
bench/bench_statistics.py use them): patients with several correlated images, one or more findings, one or more
models whose errors are correlated within a patient.

Model: patient p has each finding l with probability `prevalence[l]`; each of its images shows a finding the patient
has with probability `image_rate` (follow-up images do not all show it) and never one it has not. Model r scores
image i of patient p for finding l as  signal[l] * y_il + u_rpl + e_ril  with u ~ N(0, rho) shared by the patient's
images and e ~ N(0, 1 - rho), independent across models, findings and patients: `rho` is the within-patient error
correlation. The population AUROC of finding l (a positive and a negative image of different patients, the limit
as patients grow) is Phi(signal[l] / sqrt(2)) for every model, so equal `signal` means equally good models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

# Patient-level prevalence of the 14 NIH findings in the NIH sample (share of its 226 patients with an image showing
# the finding: data/nih-chestxray14/labels.csv), in chestxray.data.labels.NIH14 order.
NIH_PATIENT_PREVALENCE = (0.173, 0.093, 0.049, 0.018, 0.177, 0.058, 0.075, 0.009, 0.195, 0.044, 0.111, 0.075, 0.040,
                          0.031)


@dataclass(frozen=True)
class Simulated:
    """One simulated split: labels (N, L) uint8, scores (models, N, L), patient code per image (N,)."""

    y: np.ndarray
    scores: np.ndarray
    codes: np.ndarray
    n_patients: int


def true_auroc(signal: float | np.ndarray) -> float | np.ndarray:
    """The population AUROC of a finding with this signal (images of different patients)."""
    return norm.cdf(np.asarray(signal) / np.sqrt(2.0))


def signal_for(auroc: float | np.ndarray) -> float | np.ndarray:
    """The signal that gives this population AUROC."""
    return np.sqrt(2.0) * norm.ppf(np.asarray(auroc))


def nih_like_images(rng: np.random.Generator, n_patients: int) -> np.ndarray:
    """Images per patient shaped like the NIH sample's (half the patients with one image, 75th/90th/99th
    percentiles 3/7/45, mean 3.6): one image for half the patients, else 1 + ceil(lognormal(0.9, 1.1)) capped at
    66 (percentiles 4/8/25, mean 3.5)."""
    one = rng.random(n_patients) < 0.5
    more = np.minimum(1 + np.ceil(np.exp(rng.normal(0.9, 1.1, n_patients))), 66)
    return np.where(one, 1, more).astype(np.int64)


def simulate(rng: np.random.Generator, images: np.ndarray, prevalence: float | np.ndarray = 0.3,
             signal: float | np.ndarray = 1.0, rho: float = 0.5, models: int = 2,
             image_rate: float = 0.8) -> Simulated:
    """One split: `images[p]` images for patient p, findings with the given patient prevalence(s) and signal(s)."""
    prevalence = np.atleast_1d(np.asarray(prevalence, dtype=np.float64))
    signal = np.broadcast_to(np.asarray(signal, dtype=np.float64), prevalence.shape)
    n_pat, n_lab = len(images), len(prevalence)
    codes = np.repeat(np.arange(n_pat), images)
    has = rng.random((n_pat, n_lab)) < prevalence
    y = (has[codes] & (rng.random((codes.size, n_lab)) < image_rate)).astype(np.uint8)
    u = rng.normal(0.0, np.sqrt(rho), (models, n_pat, n_lab))
    e = rng.normal(0.0, np.sqrt(1.0 - rho), (models, codes.size, n_lab))
    return Simulated(y, signal * y + u[:, codes] + e, codes, n_pat)
