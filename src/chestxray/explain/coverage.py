"""What the explanations cover: the share of empty heatmaps per outcome (TP / FP / FN / TN), and what that means.

Grad-CAM keeps only the regions that push a finding's score UP (its ReLU). For an image the model scores negative
there can be no such region, and the map is empty (every pixel equal): the explanation has nothing to show for the
finding, which is not a sign that the model "looked nowhere". For those images the evidence AGAINST the finding
(Grad-CAM of the negated logit: what pushed the score down) is the map that carries information; explain draws it
instead of a grey square (--negatives auto). `coverage_table` counts empty evidence-for maps per outcome so that a
reader knows how much of a set of heatmaps can be read at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.explain.localize import is_empty_map

OUTCOMES = ("TP", "FP", "FN", "TN")
NEGATIVES = ("auto", "for", "against")  # which map a negative decision gets (explain --negatives)
MEANING = ("An empty Grad-CAM map means no region pushes the finding's score up. For an image the model scores "
           "negative (FN, TN) that is the expected answer, not a sign the model looked nowhere; its evidence-against "
           "map (Grad-CAM of the negated score: what pushed it down) is shown instead. For an image scored positive "
           "(TP, FP) an empty map means the explanation failed for that image.")


def coverage_table(outcomes: Sequence[str], empty: Sequence[bool]) -> pd.DataFrame:
    """Per outcome (TP, FP, FN, TN, then 'all'): maps, empty maps and their share; outcomes not present are left out
    ('' counts as 'unknown' when no truth was known)."""
    frame = pd.DataFrame({"outcome": [o or "unknown" for o in outcomes], "empty": np.asarray(empty, dtype=bool)})
    rows = []
    for name in (*OUTCOMES, "unknown"):
        part = frame[frame["outcome"] == name]
        if len(part):
            rows.append({"outcome": name, "maps": len(part), "empty": int(part["empty"].sum()),
                         "share_empty": float(part["empty"].mean())})
    if len(frame):
        rows.append({"outcome": "all", "maps": len(frame), "empty": int(frame["empty"].sum()),
                     "share_empty": float(frame["empty"].mean())})
    return pd.DataFrame(rows, columns=["outcome", "maps", "empty", "share_empty"])


def coverage_text(table: pd.DataFrame, method: str = "gradcam") -> str:
    """'empty gradcam maps (evidence for the finding): TP 0/4, FN 3/4, ...; all 5/16' in one line."""
    if table.empty:
        return ""
    parts = [f"{r.outcome} {r.empty}/{r.maps}" for r in table.itertuples() if r.outcome != "all"]
    total = table[table["outcome"] == "all"].iloc[0]
    return (f"empty {method} maps (evidence for the finding): {', '.join(parts)}; all {int(total['empty'])}/"
            f"{int(total['maps'])} ({total['share_empty']:.0%})")


def table_from_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """coverage_table from an explain run's scores.csv (columns outcome and for_map_empty)."""
    if scores.empty or "for_map_empty" not in scores:
        return coverage_table([], [])
    return coverage_table(scores["outcome"].fillna("").astype(str).tolist(),
                          scores["for_map_empty"].fillna(0).astype(bool).tolist())


def explain_coverage(bundle_dir: str | Path, frame: pd.DataFrame, labels: Sequence[str],
                     thresholds: dict[str, float] | None, max_images: int = 48, seed: int = 0,
                     method: str = "gradcam", multiclass: bool = False) -> pd.DataFrame:
    """Empty evidence-for maps per outcome over up to max_images images of `frame` (evaluate's predictions joined with
    the catalog: path, labels, p_<label>) and every label: no overlay is written, only the counts."""
    import torch

    from chestxray.explain.attribution import attribute
    from chestxray.explain.explanations import black_baseline, prepare_input
    from chestxray.inference.predict import resolve_device
    from chestxray.models.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    device = resolve_device()
    net = bundle.net.to(device).eval()
    base = (black_baseline(bundle.card, int(bundle.card["image_size"])).to(device) if method in ("ig", "occlusion")
            else None)
    rows = frame[frame["path"].fillna("").astype(str) != ""]
    rows = rows.sample(n=min(max_images, len(rows)), random_state=seed).sort_index() if len(rows) else rows
    labels = list(labels)
    probs = rows[[f"p_{x}" for x in labels]].to_numpy(dtype=float)
    truth = rows[labels].to_numpy().astype(bool)
    if multiclass:
        decided = np.eye(len(labels), dtype=bool)[probs.argmax(1)] if len(rows) else truth
    else:
        decided = probs >= np.array([(thresholds or {}).get(x, 0.5) for x in labels])
    kept, batch = [], []
    for i, path in enumerate(rows["path"].astype(str)):
        try:
            batch.append(prepare_input(Path(path), bundle.card)[1])
            kept.append(i)
        except Exception:  # noqa: BLE001 - an unreadable image is left out of the count
            continue
    outcomes, empty = [], []
    if not kept:
        return coverage_table(outcomes, empty)
    inputs = torch.cat(batch).to(device)
    for j in range(len(labels)):  # one backward pass per label for the whole sample
        with torch.enable_grad():
            maps = attribute(net, inputs, j, method, base)
        for k, i in enumerate(kept):
            outcomes.append(("T" if decided[i, j] == truth[i, j] else "F") + ("P" if decided[i, j] else "N"))
            empty.append(is_empty_map(maps[k]))
    return coverage_table(outcomes, empty)
