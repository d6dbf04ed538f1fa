"""Subgroup metrics and their differences, with the patient as the unit: pure functions, arrays in, a table out.

For every attribute, group and task (each finding, plus 'any finding' for a multi-label model) on the evaluated split:
images, patients, prevalence, AUROC with a patient-bootstrap interval, sensitivity, specificity, FNR and PPV at the
stored thresholds (chosen once on the whole validation split, never per group), and the under-diagnosis rate of
Seyyed-Kalantari et al. (Nature Medicine 2021): among images with at least one finding, the share called 'no finding'
(every finding below its threshold). For a one-label model that is the FNR of its label.

Differences: each group against the rest of the split (the other groups of that attribute; with two groups, one
comparison shown from both sides). Every replicate resamples PATIENTS once for the whole split, so a group and the
rest are resampled together even when a patient has images in both (age bands and views change within a patient).
The test is the Wald z of the difference with its patient-bootstrap standard error; its interval is difference ±
z_(1-alpha/2) SE, so "flagged" (Holm-adjusted p < alpha over every comparison made) and "interval excludes 0"
agree up to the multiplicity correction. The one minimum-sample rule (chestxray.evaluation.sample_rule: positive AND
negative patients) applies to each group, and to the group and the rest of a comparison.

Prevalence control (Glocker et al., eBioMedicine 2023, resample test sets to equal prevalence): resampling a group's
images within each class cannot change AUROC, sensitivity, specificity or FNR of one finding in expectation (each is
computed within a class), so those are not recomputed; what prevalence changes is PPV (given at the split's
prevalence, `pc_ppv`) and, for the under-diagnosis rate, the mix of findings among sick images (an image with three
findings is rarely called normal). `pc_underdiagnosis` is the rate directly standardised to the split's mix of
1, 2 and 3+ findings per sick image: the expected value of resampling each group to the split's case mix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from chestxray.evaluation.bootstrap import SortedTask, bootstrap_patient_counts, patient_codes
from chestxray.evaluation.sample_rule import class_patients, too_few
from chestxray.evaluation.statistics import holm
from chestxray.evaluation.subgroups import Attribute

ANY = "any finding"
TESTED = ("auroc", "fnr")  # metrics compared between groups (fnr of 'any finding' = the under-diagnosis rate)
MIX = (1, 2, 3)  # findings per sick image, 3 meaning 3 or more: the case mix pc_underdiagnosis is standardised to


@dataclass(frozen=True)
class Task:
    """One binary question asked of every image: truth, score (for AUROC), decision at the stored threshold."""

    name: str
    truth: np.ndarray  # (N,) bool
    score: np.ndarray  # (N,) float
    decided: np.ndarray  # (N,) bool
    mix: np.ndarray | None = None  # (N,) int: findings per image (1..3+) for the case-mix standardisation
    given: np.ndarray | None = None  # (N,) bool: images whose truth is known (a merged dataset leaves some missing)

    def on(self, mask: np.ndarray) -> np.ndarray:
        """The images of `mask` whose truth this task knows."""
        return mask if self.given is None else mask & self.given


def make_tasks(truth: np.ndarray, scores: np.ndarray, labels: Sequence[str], thresholds: dict[str, float] | None,
               multiclass: bool = False, normal: str | None = None) -> list[Task]:
    """One Task per label (decision p >= its threshold; argmax for a multi-class model) and, with several labels, the
    'any finding' task (truth: at least one finding; score max p; decision: any finding decided). A multi-class model
    has 'any finding' only when one class is `normal` (truth/decision: not that class). Truth may be NaN where a
    merged dataset's source does not annotate a label: such images are left out of that label's task, and 'any
    finding' is known for an image that annotates at least one label (positive when an annotated label is)."""
    values = np.asarray(truth, dtype=np.float64)
    known = ~np.isnan(values)
    y = np.where(known, values, 0).astype(bool)
    missing = not known.all()
    p = np.asarray(scores, dtype=np.float64)
    labels = list(labels)
    if multiclass:
        decided = np.eye(len(labels), dtype=bool)[p.argmax(1)]
    else:
        thr = np.array([(thresholds or {}).get(name, 0.5) for name in labels])
        decided = p >= thr
    tasks = [Task(name, y[:, j], p[:, j], decided[:, j], given=known[:, j] if missing else None)
             for j, name in enumerate(labels)]
    if multiclass and normal in labels:
        j = labels.index(normal)
        tasks.append(Task(ANY, ~y[:, j], 1.0 - p[:, j], ~decided[:, j], np.ones(len(y), dtype=int)))
    elif not multiclass and len(labels) > 1:
        tasks.append(Task(ANY, y.any(1), p.max(1), decided.any(1), np.clip(y.sum(1), 1, 3),
                          given=known.any(1) if missing else None))
    return tasks


def underdiagnosis_task(tasks: list[Task]) -> Task | None:
    """The task whose FNR is the under-diagnosis rate: 'any finding', else the one label of a binary model."""
    named = [t for t in tasks if t.name == ANY]
    return named[0] if named else (tasks[0] if len(tasks) == 1 else None)


@dataclass
class _Reps:
    """Point values and bootstrap replicates (B,) of one task on one set of images."""

    auroc: float
    auroc_b: np.ndarray
    sens: float
    sens_b: np.ndarray
    spec: float
    spec_b: np.ndarray
    ppv: float
    pos_pat: int
    neg_pat: int
    pos_img: int
    neg_img: int
    mix_b: dict[int, tuple[float, np.ndarray]]  # findings per image -> (FNR, replicates) among positives with it


def _rate(hit: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hit / np.maximum(total, 1), np.nan)


def _replicate(task: Task, mask: np.ndarray, codes: np.ndarray, n_pat: int, counts: np.ndarray) -> _Reps:
    """Everything the table needs for `task` on the images in `mask`, under the shared patient counts (B, P)."""
    y, s, d, c = task.truth[mask], task.score[mask], task.decided[mask], codes[mask]
    pos_pat, neg_pat = class_patients(y, c, n_pat)
    used, local = np.unique(c, return_inverse=True)
    sub = counts[:, used]
    ones = np.ones((1, used.size), dtype=np.float64)
    if y.any() and not y.all():
        sorted_task = SortedTask(y, s, local)
        auroc = float(sorted_task.replicates(ones)[0][0])
        auroc_b = sorted_task.replicates(sub)[0]
    else:
        auroc, auroc_b = float("nan"), np.full(len(counts), np.nan)

    def per_patient(flags: np.ndarray) -> np.ndarray:
        return np.bincount(local[flags], minlength=used.size).astype(np.float64)

    vectors = np.stack([per_patient(y & d), per_patient(y), per_patient(~y & ~d), per_patient(~y)], 1)
    mix_keys = [k for k in MIX if task.mix is not None and (y & (task.mix[mask] == k)).any()]
    for k in mix_keys:
        in_k = y & (task.mix[mask] == k)
        vectors = np.hstack([vectors, np.stack([per_patient(in_k & ~d), per_patient(in_k)], 1)])
    point = vectors.sum(0)
    reps = sub @ vectors  # (B, columns): weighted sums per replicate
    tp, pos, tn, neg = point[:4]
    fp = neg - tn
    mix_b = {k: (float(_rate(point[4 + 2 * i], point[5 + 2 * i])), _rate(reps[:, 4 + 2 * i], reps[:, 5 + 2 * i]))
             for i, k in enumerate(mix_keys)}
    return _Reps(auroc, auroc_b, float(_rate(tp, pos)), _rate(reps[:, 0], reps[:, 1]), float(_rate(tn, neg)),
                 _rate(reps[:, 2], reps[:, 3]), float(_rate(tp, tp + fp)), pos_pat, neg_pat, int(pos), int(neg),
                 mix_b)


def _interval(reps: np.ndarray, ci: float) -> tuple[float, float]:
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(ok, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def _standardised(mix_b: dict[int, tuple[float, np.ndarray]], weights: dict[int, float]) -> tuple[float, np.ndarray]:
    """FNR directly standardised to the split's case mix (weights over the strata this group has, renormalised)."""
    keys = [k for k in weights if k in mix_b]
    if not keys:
        return float("nan"), np.full(1, np.nan)
    w = np.array([weights[k] for k in keys])
    w = w / w.sum()
    point = float(sum(wi * mix_b[k][0] for wi, k in zip(w, keys)))
    reps = sum(wi * mix_b[k][1] for wi, k in zip(w, keys))
    return point, np.asarray(reps)


def _pc_ppv(sens: float, spec: float, prevalence: float) -> float:
    """PPV at another prevalence: sens * pi / (sens * pi + (1 - spec) * (1 - pi))."""
    num = sens * prevalence
    den = num + (1 - spec) * (1 - prevalence)
    return float(num / den) if den > 0 else float("nan")


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC of `auc` from n_pos positives and n_neg negatives (Hanley & McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / max(n_pos * n_neg, 1)
    return float(np.sqrt(max(var, 0.0)))


def _difference(a: np.ndarray, b: np.ndarray, point: float, se_null: float, alpha: float
                ) -> tuple[float, float, float, float]:
    """(difference, low, high, two-sided p) of a - b: Wald z with the larger of the patient-bootstrap SE of the paired
    replicates and `se_null`, the SE the difference would have under no difference with one observation per patient.
    The floor matters where a small group's metric sits at 0 or 1: every replicate then repeats it and the bootstrap
    SE collapses (a group with FNR 0 of 10 would otherwise be 'significantly' better than anything)."""
    diffs = (a - b)[np.isfinite(a - b)]
    if diffs.size < 20 or not np.isfinite(point):
        return point, float("nan"), float("nan"), float("nan")
    se = max(float(np.std(diffs, ddof=1)), se_null)
    if se <= 1e-12:
        return point, point, point, 1.0 if abs(point) < 1e-12 else 0.0
    z = norm.ppf(1 - alpha / 2)
    return point, point - z * se, point + z * se, float(2 * norm.sf(abs(point) / se))


def _null_se(metric: str, pooled: float, r: _Reps, o: _Reps) -> float:
    """SE of a group-minus-rest difference under no difference, from the pooled value and patient counts: binomial
    for FNR (positive patients), Hanley-McNeil for AUROC (positive and negative patients)."""
    if not np.isfinite(pooled):
        return 0.0
    if metric == "fnr":
        return float(np.sqrt(pooled * (1 - pooled) * (1 / max(r.pos_img, 1) + 1 / max(o.pos_img, 1))))
    return float(np.hypot(hanley_mcneil_se(pooled, r.pos_img, r.neg_img), hanley_mcneil_se(pooled, o.pos_img, o.neg_img)))


def subgroup_table(
    frame: pd.DataFrame, tasks: list[Task], attributes: list[Attribute], n_boot: int = 1000, ci: float = 0.95,
    alpha: float = 0.05, seed: int = 0,
) -> pd.DataFrame:
    """One row per attribute x group x task (see the module doc); `frame` gives patient_id per image, aligned with the
    tasks' arrays and the attributes' groups."""
    codes, n_pat = patient_codes(frame["patient_id"].astype(str).tolist())
    counts = bootstrap_patient_counts(n_pat, n_boot, np.random.default_rng(seed))
    ud = underdiagnosis_task(tasks)
    rows: list[dict] = []
    for attr in attributes:
        groups = attr.groups.to_numpy(dtype=object)
        known = pd.notna(attr.groups).to_numpy()
        levels = attr.levels
        cache: dict[tuple[str, str], _Reps] = {("*", t.name): _replicate(t, t.on(known), codes, n_pat, counts[:0])
                                               for t in tasks}  # pooled point values: the null's reference
        for g in levels:
            mask = known & (groups == g)
            rest = known & (groups != g)
            for t in tasks:
                cache[(g, t.name)] = _replicate(t, t.on(mask), codes, n_pat, counts)
                cache[("~" + g, t.name)] = (_replicate(t, t.on(rest), codes, n_pat, counts) if len(levels) > 2
                                            else None)
        weights = _mix_weights(ud, ud.on(known)) if ud is not None and ud.mix is not None else {}
        for g in levels:
            mask = known & (groups == g)
            ud_reps = cache[(g, ud.name)] if ud is not None else None
            for t in tasks:
                r = cache[(g, t.name)]
                other = levels[1 - levels.index(g)] if len(levels) == 2 else None
                o = cache[(other, t.name)] if other is not None else cache[("~" + g, t.name)]
                rows.append(_row(attr, g, t, (r, o, cache[("*", t.name)]), ud_reps, t.on(mask), codes, weights, ci,
                                 alpha, other, t.on(known)))
    table = pd.DataFrame(rows)
    return _adjust(table, alpha) if len(table) else table


def _mix_weights(task: Task, known: np.ndarray) -> dict[int, float]:
    """Share of sick images with 1, 2 and 3+ findings among those with a known group (the standard population)."""
    sick = task.truth & known
    total = max(int(sick.sum()), 1)
    return {k: float((sick & (task.mix == k)).sum() / total) for k in MIX if (sick & (task.mix == k)).any()}


def _row(attr: Attribute, g: str, t: Task, reps: tuple[_Reps, _Reps | None, _Reps], ud: _Reps | None,
         mask: np.ndarray, codes: np.ndarray, weights: dict[int, float], ci: float, alpha: float, other: str | None,
         known: np.ndarray) -> dict:
    """The table row of group g and task t (reps: the group, the rest it is compared with, both pooled)."""
    r, o, pooled = reps
    images = int(mask.sum())
    positives = int(t.truth[mask].sum())
    reason = too_few(r.pos_pat, r.neg_pat, "an interval or a test")
    row: dict = {"attribute": attr.name, "subgroup": g, "finding": t.name, "images": images,
                 "patients": int(np.unique(codes[mask]).size), "positives": positives,
                 "positive_patients": r.pos_pat, "negative_patients": r.neg_pat,
                 "prevalence": positives / images if images else float("nan"),
                 "auroc": r.auroc, "auroc_low": float("nan"), "auroc_high": float("nan"),
                 "sensitivity": r.sens, "specificity": r.spec, "fnr": 1 - r.sens, "fnr_low": float("nan"),
                 "fnr_high": float("nan"), "ppv": r.ppv,
                 "pc_ppv": _pc_ppv(r.sens, r.spec, float(t.truth[known].mean())) if known.any() else float("nan")}
    if reason is None:
        row["auroc_low"], row["auroc_high"] = _interval(r.auroc_b, ci)
        fl, fh = _interval(1 - r.sens_b, ci)
        row["fnr_low"], row["fnr_high"] = fl, fh
    row.update(_underdiagnosis(ud, weights, ci))
    row["compared_with"] = other if other is not None else f"not {g}"
    other_short = too_few(o.pos_pat, o.neg_pat, "a test") if o is not None else "no other group to compare with"
    test_reason = reason or (f"{row['compared_with']}: {other_short}" if o is not None and other_short else other_short)
    for metric, a, b, pa, pb, p0 in (
            ("auroc", r.auroc_b, o.auroc_b if o else None, r.auroc, o.auroc if o else None, pooled.auroc),
            ("fnr", 1 - r.sens_b, 1 - o.sens_b if o else None, 1 - r.sens, 1 - o.sens if o else None,
             1 - pooled.sens)):
        if test_reason is None and b is not None and o is not None:
            d, lo, hi, p = _difference(a, b, pa - pb, _null_se(metric, p0, r, o), alpha)
        else:
            d, lo, hi, p = (pa - pb if pb is not None else float("nan")), float("nan"), float("nan"), float("nan")
        row.update({f"{metric}_diff": d, f"{metric}_diff_low": lo, f"{metric}_diff_high": hi, f"{metric}_p": p})
    if t.mix is not None and o is not None and test_reason is None and weights:
        pa, ra = _standardised(r.mix_b, weights)
        pb, rb = _standardised(o.mix_b, weights)
        d, lo, hi, p = (_difference(ra, rb, pa - pb, _null_se("fnr", 1 - pooled.sens, r, o), alpha)
                        if ra.size == rb.size else (pa - pb, *(float("nan"),) * 3))
        row.update({"pc_underdiagnosis_diff": d, "pc_underdiagnosis_diff_low": lo, "pc_underdiagnosis_diff_high": hi})
    row["note"] = test_reason or ""
    return row


def _underdiagnosis(ud: _Reps | None, weights: dict[int, float], ci: float) -> dict:
    """The group's under-diagnosis rate (FNR of the under-diagnosis task) with its interval, raw and case-mix
    standardised; the rule's words replace the interval when the group has too few patients."""
    if ud is None:
        return {"underdiagnosis": float("nan")}
    out = {"underdiagnosis": 1 - ud.sens, "underdiagnosis_low": float("nan"), "underdiagnosis_high": float("nan")}
    if too_few(ud.pos_pat, ud.neg_pat) is None:
        out["underdiagnosis_low"], out["underdiagnosis_high"] = _interval(1 - ud.sens_b, ci)
    if weights:
        point, reps = _standardised(ud.mix_b, weights)
        out["pc_underdiagnosis"] = point
        if too_few(ud.pos_pat, ud.neg_pat) is None:
            out["pc_underdiagnosis_low"], out["pc_underdiagnosis_high"] = _interval(reps, ci)
    return out


def _adjust(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm over every comparison made (a two-group attribute counts once), then a flag in words per row."""
    table = table.copy()
    two = ~table["compared_with"].str.startswith("not ")
    # the mirror of a two-group comparison is the same test: count it once (the first group in reading order)
    seen: set[tuple] = set()
    family_rows: list[tuple[int, str]] = []
    for i, r in table.iterrows():
        for metric in TESTED:
            if not np.isfinite(r[f"{metric}_p"]):
                continue
            key = (r["attribute"], r["finding"], metric, frozenset((r["subgroup"], r["compared_with"]))) if two[i] \
                else (i, metric)
            if key in seen:
                continue
            seen.add(key)
            family_rows.append((i, metric))
    adjusted = holm([float(table.at[i, f"{m}_p"]) for i, m in family_rows])
    for metric in TESTED:
        table[f"{metric}_p_holm"] = np.nan
    for (i, metric), p in zip(family_rows, adjusted):
        table.at[i, f"{metric}_p_holm"] = p
    for i in table.index[two]:  # mirror rows take their pair's adjusted p
        r = table.loc[i]
        for metric in TESTED:
            if np.isfinite(r[f"{metric}_p"]) and not np.isfinite(r[f"{metric}_p_holm"]):
                pair = table[(table["attribute"] == r["attribute"]) & (table["finding"] == r["finding"])
                             & (table["subgroup"] == r["compared_with"])]
                table.at[i, f"{metric}_p_holm"] = pair[f"{metric}_p_holm"].iloc[0]
    table["flag"] = [_flag(r, alpha) for _, r in table.iterrows()]
    table.attrs["comparisons"] = len(family_rows)
    return table


def _flag(row: pd.Series, alpha: float) -> str:
    """Words for a significant gap (Holm-adjusted): 'FNR higher (+0.21)', 'AUROC lower (-0.08)', or ''."""
    words = []
    if row.get("fnr_p_holm", np.nan) < alpha:
        what = "under-diagnosis" if row["finding"] == ANY else "FNR"
        words.append(f"{what} {'higher' if row['fnr_diff'] > 0 else 'lower'} ({row['fnr_diff']:+.2f})")
    if row.get("auroc_p_holm", np.nan) < alpha:
        words.append(f"AUROC {'higher' if row['auroc_diff'] > 0 else 'lower'} ({row['auroc_diff']:+.2f})")
    return "; ".join(words)
