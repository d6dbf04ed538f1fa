"""`chestxray explain`: Grad-CAM / Integrated Gradients overlays, scored against expert boxes (area E)."""

from __future__ import annotations

from pathlib import Path

import typer

from chestxray.cli import app
from chestxray.cli.common import console, friendly, print_table


@app.command(help="Write heatmap overlays (Grad-CAM or Integrated Gradients) and scores.csv for images, and score them "
             "against expert boxes when --boxes is given (pointing game, top-20% IoU, energy in box; a map with no "
             "signal is 'n/a (empty map)', never a hit).\n\n"
             "Each run writes into its own folder, RUN/explain/<split>-<method>[-<label>][-boxes] (or --out), with "
             "settings.json; 'chestxray report' shows the latest. With --split, images are chosen by outcome at the "
             "stored thresholds (--outcomes, default TP,FP,FN: the model's hits and its mistakes), or with --boxes "
             "those that have expert boxes.\n\n"
             "Example: chestxray explain runs/r1 --split test --n 6 --method gradcam")
@friendly
def explain(
    target: Path = typer.Argument(..., help="A run folder (uses RUN/bundle) or a model bundle folder."),
    images: list[Path] = typer.Argument(None, help="Image files to explain (or use --split)."),
    method: str = typer.Option("gradcam", "--method", "-m", help="gradcam (Captum), gradcam++ or scorecam "
                               "(pytorch-grad-cam), ig (Integrated Gradients) or occlusion (Captum)."),
    label: str = typer.Option(None, "--label", "-l", help="Label to explain (default: boxed findings, else the "
                              "selected or top-scoring label)."),
    boxes: Path = typer.Option(None, "--boxes", help="NIH BBox_List_2017.csv(.gz) or a synthetic boxes.csv."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default RUN/explain/<split>-<method>…)."),
    split: str = typer.Option(None, "--split", help="Explain images of this prepared split instead of IMAGES."),
    n: int = typer.Option(8, "--n", help="With --split: how many image-label pairs."),
    outcomes: str = typer.Option("TP,FP,FN", "--outcomes", help="With --split (no --boxes): outcomes to show, in "
                                 "turn, at the stored thresholds; any of TP,FP,FN,TN."),
    steps: int = typer.Option(16, "--steps", help="Integrated Gradients steps."),
    negatives: str = typer.Option("auto", "--negatives", help="Map drawn for a finding the model decides negative: "
                                  "auto (the evidence against it when the evidence-for map is empty), against "
                                  "(always), for (never). Ignored with --boxes."),
) -> None:
    from rich.table import Table

    from chestxray.errors import ConfigError, DataError
    from chestxray.explain.targets import explain_target

    if not images and not split:
        raise ConfigError("no images to explain: give IMAGES or --split NAME")
    from chestxray.cli import checks

    checks.one_of("--negatives", negatives, ("auto", "for", "against"))  # chestxray.explain.coverage.NEGATIVES
    bundle_dir, default_out = explain_target(target)  # checked before torch loads
    missing = [str(p) for p in images or [] if not p.is_file()]
    if missing:
        raise DataError(f"no such image file(s): {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    if boxes is not None and not boxes.is_file():
        raise DataError(f"{boxes}: boxes file not found; pass the NIH BBox_List_2017.csv(.gz) or a synthetic boxes.csv")

    from chestxray.explain.explanations import (
        explain_folder,
        explain_images,
        explain_split,
        scores_table,
        summarize_scores,
    )
    from chestxray.explain.localize import read_boxes
    from chestxray.models.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    table = read_boxes(boxes) if boxes else None
    if split:
        wanted = tuple(o.strip().upper() for o in outcomes.split(",") if o.strip())
        results, out_dir = explain_split(bundle, split, n, method, default_out, table, wanted, label=label,
                                         n_steps=steps, out_dir=out, negatives=negatives)
    else:
        out_dir = out or explain_folder(default_out, None, method, label, table is not None)
        results = explain_images(bundle, images, method, label, out_dir, table, n_steps=steps, negatives=negatives)
    scored = scores_table(results)
    from chestxray.explain.coverage import MEANING, coverage_text, table_from_scores

    coverage = coverage_text(table_from_scores(scored), method)
    against = sum(r.shown == "evidence against" for r in results)
    if coverage:
        console.print(f"{coverage}; {against} negative(s) drawn as evidence against the finding. {MEANING}",
                      highlight=False, soft_wrap=True)
    summary = summarize_scores(scored)
    tally = scored["outcome"].replace("", None).dropna().value_counts() if len(scored) else []
    kinds = f" ({', '.join(f'{v} {k}' for k, v in tally.items())})" if len(tally) else ""
    if len(summary):
        grid = Table(title=f"localisation ({method}); hit = pointing game, box = box share of the image")
        heads = {"n_empty": "empty", "n_cut": "cut", "n_scored": "scored", "pointing_hit": "hit",
                 "energy_in_box": "energy", "box_fraction": "box"}
        for col in summary.columns:
            grid.add_column(heads.get(col, col.replace("iou_top", "IoU top ")), no_wrap=True,
                            justify="left" if col == "label" else "right")
        for row in summary.itertuples(index=False):
            grid.add_row(*(v if isinstance(v, str) else "n/a" if v != v else f"{v:.3g}" for v in row))
        print_table(grid)
        overall = summary.set_index("label").loc["ALL"]
        n_maps, n_empty, n_cut = int(overall["n"]), int(overall["n_empty"]), int(overall["n_cut"])
        n_scored, hit = int(overall["n_scored"]), overall["pointing_hit"]
        rate = "n/a (no map could be scored)" if not n_scored else f"{hit:.2f} over {n_scored} map(s)"
        console.print(f"explained {len(results)} image-label pair(s){kinds}; pointing-game hit rate {rate}; "
                      f"{n_empty} of {n_maps} boxed map(s) empty (no signal, scored n/a); {n_cut} box(es) cut away "
                      f"by the centre crop (scored n/a); overlays and scores.csv "
                      f"in {out_dir}", highlight=False, soft_wrap=True)
    else:
        console.print(f"explained {len(results)} image-label pair(s){kinds} (no boxes to score); overlays and scores.csv "
                      f"in {out_dir}", highlight=False, soft_wrap=True)
