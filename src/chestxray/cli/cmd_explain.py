"""`chestxray explain`: Grad-CAM / Integrated Gradients overlays, scored against expert boxes (area E)."""

from __future__ import annotations

from pathlib import Path

import typer

from chestxray.cli import app
from chestxray.cli.common import console, friendly


@app.command(help="Write heatmap overlays (Grad-CAM or Integrated Gradients) and scores.csv for images, and score them "
             "against expert boxes when --boxes is given (pointing game, top-20% IoU, energy in box).\n\n"
             "Output goes to RUN/explain (or next to a bundle) unless --out is given.\n\n"
             "Example: chestxray explain runs/r1 --split test --n 8 --boxes BBox_List_2017.csv.gz --method gradcam")
@friendly
def explain(
    target: Path = typer.Argument(..., help="A run folder (uses RUN/bundle) or a model bundle folder."),
    images: list[Path] = typer.Argument(None, help="Image files to explain (or use --split)."),
    method: str = typer.Option("gradcam", "--method", "-m", help="gradcam or ig (Integrated Gradients)."),
    label: str = typer.Option(None, "--label", "-l", help="Label to explain (default: boxed findings, else top score)."),
    boxes: Path = typer.Option(None, "--boxes", help="NIH BBox_List_2017.csv(.gz) or a synthetic boxes.csv."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default RUN/explain)."),
    split: str = typer.Option(None, "--split", help="Explain images of this prepared split instead of IMAGES."),
    n: int = typer.Option(8, "--n", help="With --split: how many images."),
    steps: int = typer.Option(16, "--steps", help="Integrated Gradients steps."),
) -> None:
    from rich.table import Table

    from chestxray.errors import ConfigError
    from chestxray.explain.explanations import (
        explain_images,
        explain_target,
        scores_table,
        select_split_images,
        summarize_scores,
    )
    from chestxray.explain.localize import read_boxes
    from chestxray.models.bundle import load_bundle

    bundle_dir, default_out = explain_target(target)
    bundle = load_bundle(bundle_dir)
    table = read_boxes(boxes) if boxes else None
    if split:
        images = select_split_images(bundle, split, n, table)
    if not images:
        raise ConfigError("no images to explain: give IMAGES or --split NAME (with --boxes: none of the split has a box)")
    out_dir = out or default_out
    results = explain_images(bundle, images, method, label, out_dir, table, n_steps=steps)
    summary = summarize_scores(scores_table(results))
    if len(summary):
        grid = Table(title=f"localisation ({method})")
        for col in summary.columns:
            grid.add_column(col, justify="left" if col == "label" else "right")
        for row in summary.itertuples(index=False):
            grid.add_row(*(v if isinstance(v, str) else "n/a" if v != v else f"{v:.3g}" for v in row))
        console.print(grid)
        overall = summary.set_index("label").loc["ALL"]
        n_maps, n_empty, hit = int(overall["n"]), int(overall["n_empty"]), overall["pointing_hit"]
        rate = "n/a (every map empty)" if n_empty == n_maps else f"{hit:.2f} over {n_maps - n_empty} map(s)"
        console.print(f"explained {len(results)} image-label pair(s); pointing-game hit rate {rate}; "
                      f"{n_empty} of {n_maps} boxed map(s) empty (no signal, scored n/a); overlays and scores.csv "
                      f"in {out_dir}", highlight=False, soft_wrap=True)
    else:
        console.print(f"explained {len(results)} image-label pair(s) (no boxes to score); overlays and scores.csv "
                      f"in {out_dir}", highlight=False, soft_wrap=True)
