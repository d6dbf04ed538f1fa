"""Where each finding's positives come from in a multi-source catalog: per source the images, the images that
annotate the finding, its positives and prevalence, and a warning when one source holds most of the positives of a
finding that several sources annotate. Then 'which source is this image from?' predicts the finding, and a model
can learn the source (its scanner, its population, its text markers) instead of the disease (Zech et al. 2018
found pneumonia models doing exactly this across hospitals)."""

from __future__ import annotations

import pandas as pd

from chestxray.data.catalog import Catalog

DOMINANT_SHARE = 0.7  # a source holding at least this share of a finding's positives is worth a warning


def source_composition(table: pd.DataFrame, labels: list[str] | tuple[str, ...], split: str | None = None
                       ) -> pd.DataFrame:
    """One row per (label, source): images, annotated, positives, prevalence among annotated, share of the label's
    positives; empty when the table has no `source` column or one source. `split` keeps that split only."""
    if "source" not in table or table["source"].nunique() < 2:
        return pd.DataFrame(columns=["label", "source", "images", "annotated", "positives", "prevalence", "share"])
    if split is not None:
        table = table[table["split"] == split]
    rows = []
    for label in labels:
        total = float(table[label].fillna(0).sum())
        for source, part in table.groupby("source", sort=True):
            annotated = int(part[label].notna().sum())
            positives = int(part[label].fillna(0).sum())
            rows.append({"label": label, "source": str(source), "images": len(part), "annotated": annotated,
                         "positives": positives, "prevalence": positives / annotated if annotated else None,
                         "share": positives / total if total else None})
    return pd.DataFrame(rows)


def catalog_composition(catalog: Catalog) -> pd.DataFrame:
    """source_composition over a whole catalog."""
    return source_composition(catalog.table, catalog.labels)


def source_warnings(composition: pd.DataFrame, share: float = DOMINANT_SHARE) -> list[str]:
    """A sentence per finding annotated by two or more sources whose positives come mostly (>= share) from one."""
    lines = []
    if composition.empty:
        return lines
    for label, part in composition.groupby("label", sort=False):
        annotating = part[part["annotated"] > 0]
        if len(annotating) < 2 or not annotating["positives"].sum():
            continue
        top = annotating.sort_values("positives", ascending=False).iloc[0]
        if top["share"] is not None and top["share"] >= share:
            others = ", ".join(f"{r.source} {r.positives}/{r.annotated}" for r in annotating.itertuples()
                               if r.source != top["source"])
            lines.append(f"{label}: {top['share']:.0%} of its positives come from source {top['source']} "
                         f"({top['positives']} of {top['annotated']} annotated images there, prevalence "
                         f"{top['prevalence']:.0%}; elsewhere {others}): a model can learn to recognise the source "
                         "instead of the finding; compare per-source metrics and the source shortcut check")
    return lines


def manifest_composition(manifest: dict) -> pd.DataFrame:
    """source_composition's table from a prepared manifest (counts over every split), for the run report."""
    labels = list(manifest.get("labels") or [])
    totals: dict[tuple[str, str], list[int]] = {}
    for entry in (manifest.get("splits") or {}).values():
        block = entry.get("sources")
        if not block:
            continue
        for k, name in enumerate(block["names"]):
            for j, label in enumerate(labels):
                t = totals.setdefault((label, name), [0, 0, 0])
                t[0] += block["count"][k]
                t[1] += block["annotated"][k][j]
                t[2] += block["positives"][k][j]
    rows = []
    for label in labels:
        total = sum(v[2] for (lab, _), v in totals.items() if lab == label)
        for (lab, name), (images, annotated, positives) in totals.items():
            if lab == label:
                rows.append({"label": label, "source": name, "images": images, "annotated": annotated,
                             "positives": positives, "prevalence": positives / annotated if annotated else None,
                             "share": positives / total if total else None})
    return pd.DataFrame(rows, columns=["label", "source", "images", "annotated", "positives", "prevalence", "share"])
