"""Exploration of a catalog: counts and prevalence per finding and split, co-occurrence, metadata summaries, a
shortcut check (chestxray.data.shortcuts) and a stratified grid of sample images, written as CSV + PNG
(matplotlib's Figure API, no pyplot state, no display needed).

Prevalence is per image (share of images carrying the finding) and per patient (share of patients with at least one
such image); in a multi-label task they do not sum to 1, and "No Finding" is the share of all-zero images.
"""

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
    shortcuts: pd.DataFrame = field(default_factory=pd.DataFrame)
    sources: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (label, source): positives, prevalence, share
    geometry: pd.DataFrame | None = None  # geometry_check, when asked for


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
    """Images and patients per finding (rows: labels + the normal row), overall and per split, with prevalence.

    prevalence_images: share of images with the finding; prevalence_patients: share of patients with it in any image.
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
    out["prevalence_images"] = (out["images"] / max(1, len(presence))).round(4)
    out["prevalence_patients"] = (out["patients"] / max(1, patients.nunique())).round(4)
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
    """Bar charts: images per finding, and prevalence per image and per patient (counts printed on the bars)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, max(3.0, 0.35 * len(findings))))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.12, right=0.97, wspace=0.55, top=0.92, bottom=0.08)
    order = findings.sort_values("images").index
    bars = axes[0].barh(order, findings.loc[order, "images"], color="tab:blue")
    axes[0].bar_label(bars, fontsize=7, padding=2)
    axes[0].set_title("images per finding")
    for ax, col, title, colour in ((axes[1], "prevalence_images", "prevalence per image", "tab:gray"),
                                   (axes[2], "prevalence_patients", "prevalence per patient", "tab:orange")):
        bars = ax.barh(order, findings.loc[order, col], color=colour)
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in findings.loc[order, col]], fontsize=7, padding=2)
        ax.set_xlim(0, min(1.0, float(findings[col].max()) * 1.25 + 0.02))
        ax.set_title(title)
    return _save(fig, path)


def _plot_cooccurrence(co: pd.DataFrame, path: Path) -> Path:
    """Heatmap of the co-occurrence counts, each cell's count printed, colour on a labelled log scale."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    values = co.to_numpy()
    size = max(4.0, 0.55 * len(co))
    fig = Figure(figsize=(size + 2, size + 1.5))
    ax = fig.add_axes((0.22, 0.22, 0.62, 0.7))
    im = ax.imshow(np.where(values > 0, values, np.nan), cmap="viridis", norm=LogNorm(vmin=1, vmax=max(1, values.max())))
    for (i, j), count in np.ndenumerate(values):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=6 if len(co) > 8 else 8,
                color="black" if count > values.max() ** 0.5 else "white" if count else "gray")
    ax.set_xticks(range(len(co)), co.columns, rotation=90)
    ax.set_yticks(range(len(co)), co.index)
    ax.set_title("images with both findings (diagonal: images per finding)")
    fig.colorbar(im, ax=ax, label="images (log scale; empty = 0)")
    return _save(fig, path)


def _plot_classes(findings: pd.DataFrame, path: Path) -> Path:
    """Binary task: images per class and split as grouped bars with counts (a co-occurrence plot would be one cell)."""
    from matplotlib.figure import Figure

    splits = [s for s in SPLITS if f"images_{s}" in findings]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_axes((0.1, 0.15, 0.85, 0.75))
    width = 0.8 / max(1, len(findings))
    for k, (name, row) in enumerate(findings.iterrows()):
        bars = ax.bar(np.arange(len(splits)) + k * width, [row[f"images_{s}"] for s in splits], width, label=str(name))
        ax.bar_label(bars, fontsize=8, padding=2)
    ax.set_xticks(np.arange(len(splits)) + width * (len(findings) - 1) / 2, splits)
    ax.set_ylabel("images")
    ax.set_title("images per class and split")
    ax.legend()
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


def _strata(catalog: Catalog, table: pd.DataFrame) -> pd.Series:
    """Each image's stratum for the sample grid: its rarest finding, or the normal class when it has none."""
    counts = table[list(catalog.labels)].sum(axis=0)
    rarest_first = [name for name in counts.sort_values(kind="stable").index]
    matrix = table[rarest_first].fillna(0).to_numpy(dtype=bool)  # a missing label is not a finding shown
    first = np.where(matrix.any(axis=1), matrix.argmax(axis=1), -1)
    return pd.Series([rarest_first[i] if i >= 0 else normal_name(catalog) for i in first], index=table.index)


def allocate(sizes: pd.Series, n: int) -> pd.Series:
    """Proportional allocation of n draws over strata (largest remainder), at least one per stratum while n allows."""
    sizes = sizes[sizes > 0]
    n = min(n, int(sizes.sum()))
    share = sizes / sizes.sum() * n
    take = np.floor(share).astype(int)
    if n >= len(sizes):
        take = take.clip(lower=1)
    while take.sum() > n:  # the minimum of one pushed us over: trim the largest
        take[take.idxmax()] -= 1
    remainder = (share - take).sort_values(ascending=False, kind="stable")
    for name in remainder.index[: n - int(take.sum())]:
        take[name] += 1
    return take.clip(upper=sizes)


def sample_grid(catalog: Catalog, path: Path, n: int = 16, seed: int = 0) -> tuple[Path | None, int, int]:
    """Grid of up to n seeded random images, stratified by finding (rarest finding, else normal) in proportion to its
    images (each stratum at least one while n allows), titled with their findings; unreadable ones are replaced
    from the same stratum when it has more, and counted.

    Returns (path or None when nothing could be shown, images shown, images skipped)."""
    from chestxray.data.imaging import load_gray

    table = catalog.table[catalog.table["path"].fillna("").astype(str) != ""]
    if table.empty:
        return None, 0, 0
    rng = np.random.default_rng(seed)
    strata = _strata(catalog, table)
    shown: list[tuple[np.ndarray, str]] = []
    skipped = 0
    for name, want in allocate(strata.value_counts(), n).items():
        members = strata.index[(strata == name).to_numpy()]
        got = 0
        for index in rng.permutation(members):
            if got == want:
                break
            row = table.loc[index]
            try:
                image = load_gray(str(row["path"]))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped and counted, never fatal here
                log.warning("sample grid: skipping %s (%s)", row["path"], exc)
                skipped += 1
                continue
            names = [label for label in catalog.labels if row[label] == 1]
            shown.append((image, ", ".join(names) or normal_name(catalog)))
            got += 1
    if not shown:
        return None, 0, skipped
    order = rng.permutation(len(shown))  # mix the strata across the grid
    return _mosaic([shown[i] for i in order], path), len(shown), skipped


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


def explore_catalog(catalog: Catalog | str | Path, out_dir: str | Path, n_samples: int = 16, seed: int = 0,
                    geometry_size: int | None = None) -> ExploreResult:
    """Write findings.csv, cooccurrence.csv, shortcuts.csv, metadata CSVs, counts/co-occurrence (or, binary, classes)/age
    PNGs and samples.png; the shortcut table is kept in the result (shortcut_warnings words it). With geometry_size,
    also geometry.csv (chestxray.data.geometry.geometry_check at that input size; kept in the result)."""
    from chestxray.data.shortcuts import shortcut_check, shortcut_warnings
    from chestxray.data.source_mix import catalog_composition

    if not isinstance(catalog, Catalog):
        catalog = load_catalog(catalog)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings = finding_counts(catalog)
    co = cooccurrence(catalog)
    shortcuts = shortcut_check(catalog, seed=seed)
    files = [write_csv(out / "findings.csv", findings, index=True), write_csv(out / "cooccurrence.csv", co, index=True),
             write_csv(out / "shortcuts.csv", shortcuts), _plot_counts(findings, out / "findings.png"),
             _plot_classes(findings, out / "classes.png") if len(catalog.labels) == 1
             else _plot_cooccurrence(co, out / "cooccurrence.png")]
    for line in shortcut_warnings(shortcuts):
        log.info("%s", line)
    composition = catalog_composition(catalog)
    if not composition.empty:
        files.append(write_csv(out / "sources.csv", composition))

    for name, frame in metadata_summary(catalog).items():
        files.append(write_csv(out / f"{name}.csv", frame, index=True))
    ages = _ages(catalog)
    if ages is not None:
        files.append(_plot_age(catalog, ages, out / "age.png"))
    grid, shown, skipped = sample_grid(catalog, out / "samples.png", n=n_samples, seed=seed)
    if grid is not None:
        files.append(grid)
    geometry = None
    if geometry_size:
        from chestxray.data.geometry import geometry_check

        geometry = geometry_check(catalog, size=geometry_size, seed=seed)
        files.append(write_csv(out / "geometry.csv", geometry))
    return ExploreResult(out, findings, files, shown, skipped, shortcuts=shortcuts, sources=composition,
                         geometry=geometry)


def explore(path: str | Path, out_dir: str | Path, augment: str | None = None, n_samples: int = 16,
            seed: int = 0, geometry_size: int | None = None) -> ExploreResult:
    """Explore a catalog folder, or a prepared folder (its catalog, plus an augmentation grid when augment is set)."""
    from chestxray.data.shards import MANIFEST, read_manifest

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if augment:
            raise DataError(f"{path}: --augment needs a prepared folder (with {MANIFEST}); run 'chestxray prepare' first")
        return explore_catalog(path, out_dir, n_samples=n_samples, seed=seed, geometry_size=geometry_size)
    manifest = read_manifest(path)
    catalog_path = manifest.get("catalog")
    if catalog_path and Path(catalog_path).exists():
        result = explore_catalog(catalog_path, out_dir, n_samples=n_samples, seed=seed, geometry_size=geometry_size)
    elif not augment:
        raise DataError(f"{manifest_path}: its catalog {catalog_path!r} is not found; explore the catalog folder itself")
    else:
        result = ExploreResult(Path(out_dir), pd.DataFrame())
    if augment:
        from chestxray.data.augment import write_augment_grid

        result.augment_grid = write_augment_grid(path, Path(out_dir), augment, n=16, seed=seed)
        result.files.append(result.augment_grid)
    return result
