"""`chestxray evaluate`, `chestxray report` and `chestxray predict` (area D): thin wrappers over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, fmt, friendly


def _metrics_table(result: Any) -> Any:
    """A rich table of the summary: AUROC with CI, AUPRC, threshold metrics and FN/FP counts."""
    from rich.table import Table

    table = Table(title=f"{result.split} split — thresholds: {result.threshold_method}", header_style="bold")
    for col in ("finding", "pos", "AUROC [95% CI]", "AUPRC", "thr", "sens", "spec", "FN", "FP", "note"):
        table.add_column(col, justify="left" if col in ("finding", "note") else "right", overflow="fold")
    for r in result.summary.rows:
        iv = r.auroc
        auc = "n/a" if iv.value is None else f"{iv.value:.3f}" + (f" [{iv.low:.3f}, {iv.high:.3f}]" if iv.low is not None else "")
        c = r.counts
        table.add_row(
            r.name, str(r.positives), auc, fmt(r.auprc.value), "—" if r.threshold is None else f"{r.threshold:.2f}",
            fmt(c.sensitivity) if c else "—", fmt(c.specificity) if c else "—",
            str(c.fn) if c else "—", str(c.fp) if c else "—", r.note,
            style=None if r.kind == "finding" else "bold",
        )
    return table


def _ci(iv: Any) -> str:
    """'0.812 [0.770, 0.850]' for a value with its CI."""
    return fmt(iv.value) + (f" [{iv.low:.3f}, {iv.high:.3f}]" if iv.low is not None else "")


def _confusion_table(mc: Any) -> Any:
    """The K x K confusion matrix of a multi-class task (argmax decision)."""
    from rich.table import Table

    table = Table(title="confusion: rows true, columns predicted (argmax)", header_style="bold")
    table.add_column("true \\ pred")
    for name in mc.classes:
        table.add_column(name, justify="right", overflow="fold")
    for name, row in zip(mc.classes, mc.confusion.tolist(), strict=True):
        table.add_row(name, *map(str, row))
    return table


PREDICT_COLUMNS_MAX = 8  # up to this many images: one column per image; more: one row per image


def _predictions_table(ok: Any, labels: list[str], thresholds: dict[str, float] | None, title: str) -> Any:
    """Few images: a label x image grid of probabilities; many: one row per image with its positive findings."""
    from rich.table import Table

    def cell(row: Any, name: str) -> str:
        p = row[f"p_{name}"]
        if row.get("predicted_class") == name:  # multiclass: the argmax class
            return f"[bold red]{p:.2f} <[/]"
        return f"[bold red]{p:.2f} +[/]" if thresholds and row.get(f"pred_{name}") == 1 else f"{p:.2f}"

    table = Table(title=title, header_style="bold")
    if len(ok) <= PREDICT_COLUMNS_MAX:
        table.add_column("label")
        if thresholds:
            table.add_column("thr", justify="right")
        for image_id in ok["image_id"]:
            table.add_column(str(image_id), justify="right", overflow="fold")
        rows = [row for _, row in ok.iterrows()]
        for name in labels:
            thr = [f"{thresholds[name]:.2f}"] if thresholds else []
            table.add_row(name, *thr, *[cell(row, name) for row in rows])
        return table
    table.add_column("image", overflow="fold")
    table.add_column("positive findings" if thresholds else "top findings", overflow="fold")
    for _, row in ok.iterrows():
        if "predicted_class" in row:
            text = f"{row['predicted_class']} {max(row[f'p_{n}'] for n in labels):.2f}"
        elif thresholds:
            hits = [f"{n} {row[f'p_{n}']:.2f}" for n in labels if row.get(f"pred_{n}") == 1]
            text = ", ".join(hits) or "none (normal)"
        else:
            top = sorted(labels, key=lambda n: -row[f"p_{n}"])[:3]
            text = ", ".join(f"{n} {row[f'p_{n}']:.2f}" for n in top)
        table.add_row(str(row["image_id"]), text)
    return table


@app.command(help="Evaluate a run: thresholds chosen on val, metrics with patient-bootstrap CIs on the split, "
             "tables and plots in RUN/eval/; the thresholds are stored in the bundle card."
             "\n\nExample: chestxray evaluate runs/densenet121 --split test --tta hflip --threshold-method youden")
@friendly
def evaluate(
    run: Path = typer.Argument(..., help="Run folder (from 'chestxray train')."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (thresholds always come from val)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, hflip or crop."),
    threshold_method: str = typer.Option("youden", "--threshold-method",
                                         help="youden, f1 or sensitivity:<target>, e.g. sensitivity:0.9."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    prepared: Path = typer.Option(None, "--prepared", help="Prepared data (default: the one in the bundle card)."),
) -> None:
    from chestxray.evaluation.evaluate import evaluate_run

    with console.status(f"evaluating {run} on {split} ..."):
        result = evaluate_run(run, split=split, tta=tta, threshold_method=threshold_method, batch_size=batch_size,
                              n_boot=n_boot, seed=seed, prepared=prepared)
    console.print(_metrics_table(result))
    mc = result.multiclass
    if mc is not None:
        console.print(_confusion_table(mc))
        console.print(f"multi-class: predicted class = argmax, thresholds do not apply; accuracy {_ci(mc.accuracy)}, "
                      f"balanced accuracy {_ci(mc.balanced_accuracy)}", highlight=False, soft_wrap=True)
    console.print(f"macro AUROC {fmt(result.macro_auroc)} on {result.summary.n_images} {split} images; "
                  f"outputs in {result.eval_dir}", highlight=False, soft_wrap=True)


@app.command(help="Write one self-contained HTML report (data, config, curves, metrics with CIs, plots, "
             "explanations) to RUN/report.html; run 'chestxray evaluate RUN' first."
             "\n\nExample: chestxray report runs/densenet121")
@friendly
def report(
    run: Path = typer.Argument(..., help="Run folder with eval/ (from 'chestxray evaluate')."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN/report.html)."),
) -> None:
    from chestxray.report.run_report import write_report

    path = write_report(run, out)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline)", highlight=False, soft_wrap=True)


@app.command(help="Per-label probabilities for image files (PNG, JPEG, DICOM) and positive/negative at the "
             "thresholds stored in the bundle; unreadable files are listed with the reason."
             "\n\nExample: chestxray predict runs/densenet121/bundle scans/*.png --out preds.csv")
@friendly
def predict(
    bundle: Path = typer.Argument(..., help="Model bundle folder (or a run folder holding bundle/)."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV to write (one row per image)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, hflip or crop."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
) -> None:
    from chestxray.evaluation.thresholds import apply_thresholds
    from chestxray.files import write_csv
    from chestxray.inference.predict import as_bundle, predict_images

    model = as_bundle(bundle)
    labels = list(model.labels)
    frame = predict_images(model, images, batch_size=batch_size, tta=tta)
    multiclass = "predicted_class" in frame
    thresholds = None if multiclass else model.thresholds
    if thresholds:
        frame = apply_thresholds(frame, labels, thresholds)
    elif not multiclass:
        err_console.print("[yellow]warning:[/] the bundle has no thresholds yet (run 'chestxray evaluate RUN'); "
                          "showing probabilities only", highlight=False)
    title = f"{model.card['architecture']}: probabilities" + (
        f"; bold red + = positive at the stored threshold ({model.card.get('threshold_method')})" if thresholds else
        "; bold red < = predicted class (argmax; thresholds do not apply)" if multiclass else "")
    ok, bad = frame[frame["status"] == "ok"], frame[frame["status"] != "ok"]
    if not ok.empty:
        console.print(_predictions_table(ok, labels, thresholds, title))
    for reason in bad["reason"]:
        err_console.print(f"[yellow]quarantined:[/] {reason}", highlight=False, soft_wrap=True)
    if out is not None:
        write_csv(out, frame)
    if ok.empty:
        from chestxray.errors import DataError

        raise DataError(f"none of the {len(frame)} image(s) could be read; see the reasons above")
    console.print(f"{len(ok)} image(s) scored, {len(bad)} quarantined" + (f"; wrote {out}" if out else ""),
                  highlight=False, soft_wrap=True)
