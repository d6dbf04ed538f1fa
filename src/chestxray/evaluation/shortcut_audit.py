"""What a trained model does with shortcuts: three measurements on a sample of the evaluated split's images.

1. AUROC within strata of each acquisition feature (width, height, aspect ratio, file size, brightness, contrast,
   bit depth; view / site / manufacturer where the catalog has them) beside the plain AUROC, computed from evaluate's
   stored scores (chestxray.evaluation.feature_strata): a large drop means the model's ranking leans on the feature.
2. A counterfactual re-render: every sampled image is decoded and fitted to the model's square with each geometry
   (pad, crop, stretch: chestxray.data.imaging.load_square, the decode prepare uses) and scored through the one
   scoring path (chestxray.inference.scoring.Scorer, with the stored TTA); decisions at the stored thresholds that
   change with the geometry alone are counted. The model's own geometry must reproduce evaluate's scores (parity).
3. A linear probe on the penultimate features (the input of the network's last linear layer): can they tell the
   view / site / source / manufacturer / sex, or whether an image is wider than the median? Cross-validated,
   grouped by patient; the same probe on the input pixels is the reference for what the image itself gives away.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data.geometry import probe_auroc
from chestxray.data.imaging import RESIZE_MODES, load_square
from chestxray.evaluation.bootstrap import patient_codes
from chestxray.evaluation.feature_strata import stratified_auroc
from chestxray.evaluation.sample_rule import class_patients, too_few
from chestxray.evaluation.subgroups import find_column, sex_group

log = logging.getLogger(__name__)

CATEGORICAL = ("view", "site", "location", "source", "manufacturer")
PROBE_TARGETS = ("view", "site", "location", "source", "manufacturer", "sex")
WIDER = "wider than the median"
PIXEL_SIDE = 16  # the pixel probe sees the model input averaged down to at most this side (256 values: fast fits)


@dataclass
class ShortcutAudit:
    """Tables of the three measurements, the sample they used, and findings in words."""

    strata: pd.DataFrame
    counterfactual: pd.DataFrame
    probe: pd.DataFrame
    images: int
    skipped: int
    parity: float | None  # max |p| difference between the own-geometry re-render and evaluate's stored scores
    findings: list[str] = field(default_factory=list)


def sample_images(frame: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """Up to max_images rows with an image path, drawn with a seeded generator (stored order kept)."""
    rows = frame[frame["path"].fillna("").astype(str) != ""] if "path" in frame else frame.iloc[:0]
    if len(rows) > max_images:
        rows = rows.sample(n=max_images, random_state=seed).sort_index()
    return rows


def acquisition_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Acquisition features per row (chestxray.data.shortcuts.image_features) plus the catalog's categorical ones;
    NaN where a file cannot be read."""
    from chestxray.data.shortcuts import FEATURES, image_features

    records = []
    for path in rows["path"].astype(str):
        try:
            records.append(image_features(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is left out of this check, never fatal
            log.debug("shortcut audit: no features for %s (%s)", path, exc)
            records.append({name: np.nan for name in FEATURES})
    features = pd.DataFrame(records, index=rows.index)
    for name in CATEGORICAL:
        column = find_column(rows, name)
        if column is not None:
            features[name] = rows[column].astype("string").str.strip().str.upper()
    return features


def strata_table(rows: pd.DataFrame, features: pd.DataFrame, labels: Sequence[str], n_boot: int, seed: int
                 ) -> pd.DataFrame:
    """Per label and feature (varying ones only): the feature's own AUROC, the model's plain AUROC and its AUROC
    within the feature's strata, with patient-bootstrap intervals."""
    from chestxray.evaluation.metrics import auroc

    out = []
    patients = rows["patient_id"].astype(str).tolist()
    for label in labels:
        given = rows[label].notna().to_numpy()  # a merged dataset: only the images that annotate the label
        y = rows[label].fillna(0).to_numpy().astype(bool)
        if y[given].all() or not y[given].any():
            continue
        score = rows[f"p_{label}"].to_numpy(dtype=float)
        for name in features.columns:
            values = features[name]
            if values.nunique(dropna=True) < 2:
                continue
            known = values.notna().to_numpy() & given
            if y[known].all() or not y[known].any():
                continue
            numeric = pd.api.types.is_numeric_dtype(values)
            alone = auroc(y[known], values[known].to_numpy(dtype=float)) if numeric else None
            ids = [patients[i] for i in np.flatnonzero(known)]
            codes, n_pat = patient_codes(ids)
            short = too_few(*class_patients(y[known], codes, n_pat))
            res = stratified_auroc(y[known], score[known], values[known].to_numpy(), ids, n_boot=n_boot, seed=seed)
            lows_highs = ((np.nan,) * 4 if short else (res.plain_low, res.plain_high, res.stratified_low,
                                                       res.stratified_high))
            out.append({"label": label, "feature": name, "images": int(known.sum()), "strata": res.strata,
                        "feature_auroc": alone, "auroc": res.plain, "auroc_low": lows_highs[0],
                        "auroc_high": lows_highs[1], "stratified_auroc": res.stratified,
                        "stratified_low": lows_highs[2], "stratified_high": lows_highs[3],
                        "drop": res.plain - res.stratified, "note": short or ""})
    return pd.DataFrame(out)


def render(rows: pd.DataFrame, size: int, modes: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """uint8 (N, S, S) per geometry for the rows' files, and the mask of rows that decoded (others are skipped)."""
    stacks: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    ok = np.ones(len(rows), dtype=bool)
    for i, path in enumerate(rows["path"].astype(str)):
        try:
            images = {m: load_square(path, size, m) for m in modes}
        except Exception as exc:  # noqa: BLE001 - a file prepare quarantined is skipped here too
            log.debug("shortcut audit: cannot render %s (%s)", path, exc)
            ok[i] = False
            continue
        for m in modes:
            stacks[m].append(images[m])
    empty = np.zeros((0, size, size), dtype=np.uint8)
    return {m: np.stack(v) if v else empty for m, v in stacks.items()}, ok


def decisions(probs: np.ndarray, labels: Sequence[str], thresholds: dict[str, float] | None, multiclass: bool
              ) -> np.ndarray:
    """(N, L) bool decisions: p >= stored threshold (0.5 without), or the argmax class for a multi-class model."""
    if multiclass:
        return np.eye(len(labels), dtype=bool)[probs.argmax(1)]
    thr = np.array([(thresholds or {}).get(x, 0.5) for x in labels])
    return probs >= thr


def counterfactual_table(truth: np.ndarray, scores: dict[str, np.ndarray], own: str, labels: Sequence[str],
                         thresholds: dict[str, float] | None, multiclass: bool = False) -> pd.DataFrame:
    """Per other geometry and label (plus 'any finding' for a multi-label model): decisions that change against the
    model's own geometry, in which direction, mean |delta p|, and the AUROC under each geometry."""
    from chestxray.evaluation.metrics import auroc

    base = decisions(scores[own], labels, thresholds, multiclass)
    rows = []
    for mode, probs in scores.items():
        if mode == own:
            continue
        now = decisions(probs, labels, thresholds, multiclass)
        columns = list(labels) + ([] if multiclass or len(labels) == 1 else ["any finding"])
        values = np.asarray(truth, dtype=np.float64)  # NaN: a label the image's source does not annotate
        for j, name in enumerate(columns):
            if name == "any finding":
                a, b, y = base.any(1), now.any(1), (values == 1).any(1)
                pa, pb, given = scores[own].max(1), probs.max(1), ~np.isnan(values).all(1)
            else:
                a, b, y, pa, pb = base[:, j], now[:, j], values[:, j] == 1, scores[own][:, j], probs[:, j]
                given = ~np.isnan(values[:, j])
            rows.append({"geometry": f"{own} -> {mode}", "label": name, "images": len(a),
                         "changed": int((a != b).sum()), "changed_share": float((a != b).mean()) if len(a) else np.nan,
                         "to_positive": int((~a & b).sum()), "to_negative": int((a & ~b).sum()),
                         "mean_abs_dp": float(np.abs(pa - pb).mean()) if len(a) else np.nan,
                         "auroc_own": auroc(y[given], pa[given]) if given.any() else None,
                         "auroc_rendered": auroc(y[given], pb[given]) if given.any() else None})
    return pd.DataFrame(rows)


def penultimate_layer(net: Any) -> Any:
    """The network's last nn.Linear (its input is the penultimate feature vector); None when it has none."""
    import torch

    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    return linear[-1] if linear else None


def pixel_features(pixels: np.ndarray) -> np.ndarray:
    """Model inputs (N, S, S) averaged down to at most PIXEL_SIDE per side, flattened (the pixel probe's input)."""
    n, s, _ = pixels.shape
    k = max(1, int(np.ceil(s / PIXEL_SIDE)))
    side = s // k
    blocks = pixels[:, : side * k, : side * k].reshape(n, side, k, side, k).mean((2, 4))
    return blocks.reshape(n, -1).astype(np.float64)


def probe_table(features: np.ndarray, pixels: np.ndarray, rows: pd.DataFrame, acquisition: pd.DataFrame,
                seed: int) -> pd.DataFrame:
    """Per target the catalog has (and 'wider than the median' where images differ in shape): the probe's AUROC
    from the penultimate features and from the input pixels."""
    targets: dict[str, pd.Series] = {}
    for name in PROBE_TARGETS:
        column = find_column(rows, name)
        if column is not None:
            values = rows[column]
            targets[name] = (sex_group(values) if name == "sex" else values.astype("string").str.strip()).reset_index(
                drop=True)
    if "aspect_ratio" in acquisition and acquisition["aspect_ratio"].nunique(dropna=True) > 1:
        ratio = acquisition["aspect_ratio"].reset_index(drop=True)
        targets[WIDER] = (ratio > ratio.median()).map({True: "wider", False: "not wider"}).where(ratio.notna())
    groups = rows["patient_id"].astype(str).tolist()
    out = []
    for name, target in targets.items():
        auc_f, n_classes, reason = probe_auroc(features, target, groups, seed)
        auc_p = probe_auroc(pixel_features(pixels), target, groups, seed)[0] if not reason else float("nan")
        out.append({"target": name, "classes": n_classes, "images": int(target.notna().sum()),
                    "probe_auroc_features": auc_f, "probe_auroc_pixels": auc_p, "note": reason})
    return pd.DataFrame(out)


def own_geometry(card: dict[str, Any]) -> str:
    """The resize mode the model was trained and evaluated with."""
    return str(card.get("resize", "pad"))


def geometries(own: str) -> list[str]:
    """The model's own geometry first, then every other one."""
    return [own, *[m for m in RESIZE_MODES if m != own]]


def summarize_shortcuts(result: ShortcutAudit, own: str) -> list[str]:
    """Findings in words: the largest AUROC drop under stratification, the decisions geometry alone changes, the
    probe targets the features tell apart."""
    lines = []
    enough = result.strata[result.strata["note"] == ""] if len(result.strata) else result.strata
    if len(enough):  # only labels with enough patients: a handful of positives makes any drop
        worst = enough.sort_values("drop", ascending=False).iloc[0]
        lines.append(f"largest AUROC drop within strata: {worst['label']} by {worst['feature']}, "
                     f"{worst['auroc']:.3f} plain vs {worst['stratified_auroc']:.3f} within {int(worst['strata'])} "
                     f"strata (drop {worst['drop']:+.3f})")
    for mode, part in result.counterfactual.groupby("geometry", sort=False) if len(result.counterfactual) else []:
        lines.append(f"re-rendered {mode}: {int(part['changed'].sum())} of {int(part['images'].sum())} decisions "
                     f"(image x label) change; mean |delta p| {part['mean_abs_dp'].mean():.3f}")
    for _, r in result.probe.iterrows() if len(result.probe) else []:
        if np.isfinite(r["probe_auroc_features"]):
            lines.append(f"the penultimate features tell {r['target']} apart with AUROC "
                         f"{r['probe_auroc_features']:.2f} (input pixels: {r['probe_auroc_pixels']:.2f})")
    if result.parity is not None:
        lines.append(f"scoring check: the {own} re-render reproduces evaluate's scores within {result.parity:.1e}")
    return lines


def _batched(score: Any, pixels: np.ndarray, captured: list[np.ndarray], size: int = 64
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (N, L) of uint8 images (N, S, S) in batches, and the penultimate features the hook captured (mean over
    the TTA views of each batch), or None without a hook."""
    probs, feats = [], []
    for start in range(0, len(pixels), size):
        captured.clear()
        probs.append(score(pixels[start:start + size]))
        if captured:
            feats.append(np.mean(np.stack(captured), axis=0))
    if not probs:
        return np.zeros((0, 0)), None
    return np.concatenate(probs), (np.concatenate(feats) if feats else None)


def audit_shortcuts(bundle_dir: str | Path, frame: pd.DataFrame, labels: Sequence[str],
                    thresholds: dict[str, float] | None, task: str = "multilabel", max_images: int = 400,
                    n_boot: int = 500, seed: int = 0) -> ShortcutAudit:
    """The three measurements on up to max_images images of `frame` (evaluate's predictions joined with the catalog:
    path, patient_id, labels, p_<label>, attributes), scoring re-renders with the bundle through the one scoring path."""
    from chestxray.inference.predict import torch_scorer
    from chestxray.models.bundle import load_bundle

    labels = list(labels)
    bundle = load_bundle(bundle_dir)
    rows = sample_images(frame, max_images, seed)
    acquisition = acquisition_table(rows)
    strata = strata_table(rows, acquisition, labels, n_boot, seed)
    own = own_geometry(bundle.card)
    pixels, ok = render(rows, int(bundle.card["image_size"]), geometries(own))
    rows, acquisition = rows[ok], acquisition[ok]
    layer = penultimate_layer(bundle.net)
    captured: list[np.ndarray] = []
    hook = layer.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0].detach().float().cpu().numpy())
                                       ) if layer is not None else None
    try:
        scorer = torch_scorer(bundle)
        scores, features = {}, None
        for mode, stack in pixels.items():
            scores[mode], feats = _batched(scorer.score, stack, captured)
            features = feats if mode == own else features
    finally:
        if hook is not None:
            hook.remove()
    multiclass = task == "multiclass"
    truth = rows[labels].to_numpy(dtype=float)  # 0/1, NaN where a merged dataset's source does not annotate
    counter = counterfactual_table(truth, scores, own, labels, thresholds, multiclass) if len(rows) else pd.DataFrame()
    stored = rows[[f"p_{x}" for x in labels]].to_numpy(dtype=float)
    parity = float(np.abs(scores[own] - stored).max()) if len(rows) else None
    probe = (probe_table(features, pixels[own], rows, acquisition, seed) if features is not None and len(rows)
             else pd.DataFrame(columns=["target", "note"]))
    result = ShortcutAudit(strata, counter, probe, int(ok.sum()), int((~ok).sum()), parity)
    result.findings = summarize_shortcuts(result, own)
    log.info("shortcut audit: %d images (%d skipped), parity %.2e", result.images, result.skipped, parity or 0.0)
    return result
