"""Exploration of a catalog: counts per finding and split, class balance, co-occurrence, metadata summaries and a
grid of sample images, written as CSV + PNG (matplotlib's Figure API, no pyplot state, no display needed)."""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from chestxray.data.catalog import SPLITS, Catalog, load_catalog
from chestxray.errors import DataError
from chestxray.files import atomic_path, write_csv

log = logging.getLogger(__name__)

NORMAL = "No Finding"


@dataclass
class ExploreResult:
    """What explore wrote: the per-finding table (also findings.csv), every file, and the sample-grid tallies."""

    out_dir: Path
    findings: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    samples_shown: int = 0
    samples_skipped: int = 0
    augment_grid: Path | None = None


def normal_name(catalog: Catalog) -> str:
    """Name shown for the all-zero row: the source's normal class (e.g. NORMAL) or 'No Finding'."""
    return str(catalog.info.get("normal_class") or NORMAL)


def _presence(catalog: Catalog) -> pd.DataFrame:
    """Per image 0/1 columns for every label plus the normal row (all labels 0)."""
    matrix = catalog.label_matrix
    frame = pd.DataFrame(matrix, columns=list(catalog.labels), index=catalog.table.index)
    if normal_name(catalog) not in frame:  # a multi-class catalog's normal class is already a column
        frame[normal_name(catalog)] = (matrix.sum(1) == 0).astype(np.uint8)
    return frame


def finding_counts(catalog: Catalog) -> pd.DataFrame:
    """Images and patients per finding (rows: labels + the normal row), overall and per split, with class shares.

    share_with_normal: share of all label occurrences incl. No Finding; share_without_normal: among findings only.
    """
    presence = _presence(catalog)
    patients = catalog.table["patient_id"].astype(str)
    out = pd.DataFrame(index=presence.columns)
    out["images"] = presence.sum(axis=0)
    out["patients"] = presence.groupby(patients.to_numpy()).max().sum(axis=0)
    split = catalog.table["split"].astype(str).to_numpy()
    for name in SPLITS:
        rows = split == name
        if rows.any():
            out[f"images_{name}"] = presence[rows].sum(axis=0)
            out[f"patients_{name}"] = presence[rows].groupby(patients.to_numpy()[rows]).max().sum(axis=0)
    out["share_with_normal"] = (out["images"] / out["images"].sum()).round(4)
    findings_total = out["images"].drop(normal_name(catalog)).sum()
    out["share_without_normal"] = (out["images"] / findings_total if findings_total else 0.0).round(4)
    out.loc[normal_name(catalog), "share_without_normal"] = np.nan
    out.index.name = "finding"
    return out


def cooccurrence(catalog: Catalog) -> pd.DataFrame:
    """(L, L) number of images carrying both findings; the diagonal is images per finding."""
    matrix = catalog.label_matrix.astype(np.int64)
    return pd.DataFrame(matrix.T @ matrix, index=list(catalog.labels), columns=list(catalog.labels))


def _ages(catalog: Catalog) -> pd.Series | None:
    """Age column as numbers, or None when the catalog has no usable age."""
    if "age" not in catalog.table:
        return None
    ages = pd.to_numeric(catalog.table["age"], errors="coerce")
    return ages if ages.notna().any() else None


def metadata_summary(catalog: Catalog) -> dict[str, pd.DataFrame]:
    """Age statistics and sex/view counts per split, for the metadata columns the catalog has."""
    table = catalog.table
    out: dict[str, pd.DataFrame] = {}
    ages = _ages(catalog)
    if ages is not None:
        stats = ages.groupby(table["split"].astype(str)).describe()
        stats.loc["all"] = ages.describe()
        out["age"] = stats.round(2)
    for col in ("sex", "view"):
        if col in table and table[col].notna().any():
            counts = pd.crosstab(table[col].fillna("unknown").astype(str), table["split"].astype(str))
            counts["all"] = counts.sum(axis=1)
            out[col] = counts
    return out


def _save(fig, path: Path) -> Path:
    """Write a matplotlib Figure to PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _plot_counts(findings: pd.DataFrame, path: Path) -> Path:
    """Bar charts: images per finding, and class shares with and without No Finding."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, max(3.0, 0.35 * len(findings))))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.12, right=0.98, wspace=0.55, top=0.92, bottom=0.08)
    order = findings.sort_values("images").index
    axes[0].barh(order, findings.loc[order, "images"], color="tab:blue")
    axes[0].set_title("images per finding")
    axes[1].barh(order, findings.loc[order, "share_with_normal"], color="tab:gray")
    axes[1].set_title("share incl. No Finding")
    without = findings[findings["share_without_normal"].notna()].sort_values("images")
    axes[2].barh(without.index, without["share_without_normal"], color="tab:orange")
    axes[2].set_title("share of findings (excl. No Finding)")
    return _save(fig, path)


def _plot_cooccurrence(co: pd.DataFrame, path: Path) -> Path:
    """Heatmap of the co-occurrence counts (log scale so rare pairs are visible)."""
    from matplotlib.figure import Figure

    size = max(4.0, 0.5 * len(co))
    fig = Figure(figsize=(size + 2, size + 1.5))
    ax = fig.add_axes((0.22, 0.22, 0.62, 0.7))
    im = ax.imshow(np.log1p(co.to_numpy()), cmap="viridis")
    ax.set_xticks(range(len(co)), co.columns, rotation=90)
    ax.set_yticks(range(len(co)), co.index)
    ax.set_title("co-occurrence (log1p images)")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def _plot_age(catalog: Catalog, ages: pd.Series, path: Path) -> Path:
    """Histogram of patient age per split."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_axes((0.1, 0.15, 0.85, 0.78))
    for name in SPLITS:
        values = ages[(catalog.table["split"] == name).to_numpy()].dropna()
        if len(values):
            ax.hist(values.clip(0, 110), bins=30, alpha=0.5, label=name)
    ax.set_xlabel("age (years)")
    ax.legend()
    return _save(fig, path)


def sample_grid(catalog: Catalog, path: Path, n: int = 16, seed: int = 0) -> tuple[Path | None, int, int]:
    """Grid of up to n seeded random images titled with their findings; unreadable ones are skipped.

    Returns (path or None when nothing could be shown, images shown, images skipped)."""
    from chestxray.data.imaging import load_gray

    table = catalog.table[catalog.table["path"].fillna("").astype(str) != ""]
    if table.empty:
        return None, 0, 0
    rng = np.random.default_rng(seed)
    rows = table.iloc[np.sort(rng.choice(len(table), size=min(len(table), 3 * n), replace=False))]
    shown: list[tuple[np.ndarray, str]] = []
    skipped = 0
    for _, row in rows.iterrows():
        if len(shown) == n:
            break
        try:
            image = load_gray(str(row["path"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and counted, never fatal here
            log.warning("sample grid: skipping %s (%s)", row["path"], exc)
            skipped += 1
            continue
        names = [name for name in catalog.labels if int(row[name]) == 1]
        shown.append((image, ", ".join(names) or normal_name(catalog)))
    if not shown:
        return None, 0, skipped
    return _mosaic(shown, path), len(shown), skipped


def _mosaic(shown: list[tuple[np.ndarray, str]], path: Path, tile: int = 160) -> Path:
    """Paste images (fitted on black square tiles) into one array and title each tile: one Axes, fast to draw."""
    from matplotlib.figure import Figure
    from PIL import Image

    cols = int(np.ceil(np.sqrt(len(shown))))
    rows = int(np.ceil(len(shown) / cols))
    band = 30  # pixels above each tile for its title (two lines)
    canvas = np.full((rows * (tile + band), cols * tile), 255, dtype=np.uint8)
    fig = Figure(figsize=(canvas.shape[1] / 100, canvas.shape[0] / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    for i, (image, title) in enumerate(shown):
        img = Image.fromarray(np.asarray(image, dtype=np.uint8))
        scale = tile / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        r, c = divmod(i, cols)
        y0 = r * (tile + band) + band + (tile - img.height) // 2
        x0 = c * tile + (tile - img.width) // 2
        canvas[r * (tile + band) + band:(r + 1) * (tile + band), c * tile:(c + 1) * tile] = 0
        canvas[y0:y0 + img.height, x0:x0 + img.width] = np.asarray(img)
        lines = textwrap.wrap(title.replace(",", ", ").replace("  ", " "), 28) or [""]
        text = "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")
        ax.text(c * tile + tile / 2, r * (tile + band) + band / 2, text, ha="center", va="center", fontsize=6.5,
                linespacing=1.0)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    return _save(fig, path)


def explore_catalog(catalog: Catalog | str | Path, out_dir: str | Path, n_samples: int = 16, seed: int = 0) -> ExploreResult:
    """Write findings.csv, cooccurrence.csv, metadata CSVs, counts/co-occurrence/age PNGs and samples.png."""
    if not isinstance(catalog, Catalog):
        catalog = load_catalog(catalog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings = finding_counts(catalog)
    co = cooccurrence(catalog)
    files = [write_csv(out / "findings.csv", findings, index=True), write_csv(out / "cooccurrence.csv", co, index=True),
             _plot_counts(findings, out / "findings.png"), _plot_cooccurrence(co, out / "cooccurrence.png")]
    for name, frame in metadata_summary(catalog).items():
        files.append(write_csv(out / f"{name}.csv", frame, index=True))
    ages = _ages(catalog)
    if ages is not None:
        files.append(_plot_age(catalog, ages, out / "age.png"))
    grid, shown, skipped = sample_grid(catalog, out / "samples.png", n=n_samples, seed=seed)
    if grid is not None:
        files.append(grid)
    return ExploreResult(out, findings, files, shown, skipped)


def explore(path: str | Path, out_dir: str | Path, augment: str | None = None, n_samples: int = 16,
            seed: int = 0) -> ExploreResult:
    """Explore a catalog folder, or a prepared folder (its catalog, plus an augmentation grid when augment is set)."""
    from chestxray.data.shards import MANIFEST, read_manifest

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if augment:
            raise DataError(f"{path}: --augment needs a prepared folder (with {MANIFEST}); run 'chestxray prepare' first")
        return explore_catalog(path, out_dir, n_samples=n_samples, seed=seed)
    manifest = read_manifest(path)
    catalog_path = manifest.get("catalog")
    if catalog_path and Path(catalog_path).exists():
        result = explore_catalog(catalog_path, out_dir, n_samples=n_samples, seed=seed)
    elif not augment:
        raise DataError(f"{manifest_path}: its catalog {catalog_path!r} is not found; explore the catalog folder itself")
    else:
        result = ExploreResult(Path(out_dir), pd.DataFrame())
    if augment:
        from chestxray.data.augment import write_augment_grid

        result.augment_grid = write_augment_grid(path, Path(out_dir), augment, n=16, seed=seed)
        result.files.append(result.augment_grid)
    return result
