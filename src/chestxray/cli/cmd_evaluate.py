"""`chestxray evaluate` and `chestxray report`: thin wrappers over the library."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, fmt, friendly, print_table
from chestxray.errors import ConfigError


def _short_ci(low: float | None, high: float | None) -> str:
    """A compact interval: '.522–.676' (leading zeros dropped so the table fits 80 columns)."""
    if low is None or high is None:
        return ""
    return f"{low:.3f}–{high:.3f}".replace("0.", ".")


def _metrics_table(result: Any) -> tuple[Any, list[str]]:
    """A rich table of the summary that fits 80 columns (names never wrapped: short column heads, CI as .lo–.hi,
    notes below the table), and those notes."""
    from rich import box
    from rich.table import Table

    multiclass = result.multiclass is not None
    title = (f"{result.split} split — classes one-vs-rest; decision = argmax (thresholds do not apply)" if multiclass
             else f"{result.split} split — thresholds: {result.threshold_method}")
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    first = "class" if multiclass else "finding"
    for col in (first, "pos", "AUROC", "95% CI", "AUPRC", "thr", "sens", "spec", "FN", "FP"):
        table.add_column(col, justify="left" if col == first else "right", no_wrap=True)
    notes = []
    for r in result.summary.rows:
        iv, c = r.auroc, r.counts
        withheld = iv.value is not None and iv.low is None and bool(iv.reason)  # the minimum-sample rule's words
        note = "; ".join(x for x in (r.note, iv.reason if withheld else "") if x)
        table.add_row(
            r.name + ("*" if note else ""), str(r.positives), fmt(iv.value),
            ("too few" if iv.reason.startswith(("too few", "no interval")) else "n/a") if withheld else
            _short_ci(iv.low, iv.high), fmt(r.auprc.value),
            "—" if r.threshold is None else f"{r.threshold:.2f}", fmt(c.sensitivity) if c else "—",
            fmt(c.specificity) if c else "—", str(c.fn) if c else "—", str(c.fp) if c else "—",
            style=None if r.kind == "finding" else "bold",
        )
        if note:
            notes.append(f"* {r.name}: {note}")
    return table, notes


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


@app.command(help="Evaluate a run: thresholds chosen on val, metrics with patient-bootstrap CIs on the split (and per "
             "source for a merged dataset), tables and plots in RUN/eval/; the thresholds are stored in the bundle "
             "card. With --data (a catalog or prepared folder the run never saw): external validation into "
             "RUN/external/NAME with the run's own thresholds beside the site's, labels mapped through the "
             "vocabulary, patient overlap checked by id and image content; the bundle is never changed."
             "\n\nExample: chestxray evaluate runs/densenet121 --split test --tta hflip --threshold-method youden"
             "\n\nExample (external): chestxray evaluate runs/nih-model --data runs/covid-test-catalog")
@friendly
def evaluate(
    run: Path = typer.Argument(..., help="Run folder (from 'chestxray train')."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate (thresholds always come from val; "
                                        "default test; with --data every image)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, hflip, crop or tencrop (five 0.875 crops and their mirrors, as CheXNet)."),
    threshold_method: str = typer.Option("youden", "--threshold-method",
                                         help="youden, f1 or sensitivity:<target>, e.g. sensitivity:0.9."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    prepared: str = typer.Option(None, "--prepared", help="Prepared data, a folder or an http(s)://, s3:// URL "
                                 "(default: the one in the bundle card)."),
    verify_checksums: Optional[bool] = typer.Option(None, "--verify-checksums/--no-verify-checksums",
                                                    help="Before evaluating, compare the sha256 of every shard read "
                                                    "with the manifest (default: for a local folder, not for a URL; "
                                                    "shard sizes are always checked)."),
    ood: bool = typer.Option(True, "--ood/--no-ood", help="Also fit the out-of-distribution reference (train and val "
                             "features) that predict and serve use to mark inputs unlike the training images."),
    data: Optional[Path] = typer.Option(None, "--data", help="External validation: a catalog or prepared folder the "
                                        "run never saw (all splits, or --split if given); RUN/external/NAME, bundle "
                                        "unchanged."),
    label_map: Optional[Path] = typer.Option(None, "--map", help="With --data: YAML label map (docs/datasets.md) "
                                             "when the data's labels need other names than the default map gives."),
    overlap: str = typer.Option("refuse", "--overlap", help="With --data, images identical to the run's training/"
                                "validation images: refuse, drop (leave their patients out) or report."),
    name: Optional[str] = typer.Option(None, "--name", help="With --data: the output folder RUN/external/NAME "
                                       "(default: the data folder's name)."),
    engine: str = typer.Option("auto", "--engine", help="What runs the network: auto (the bundle's ONNX graph "
                               "through onnxruntime on the CPU, exported once and cached beside it; PyTorch on a "
                               "GPU or where the export fails), onnxruntime or torch."),
) -> None:
    from chestxray.cli import checks

    checks.tta(tta)
    checks.engine(engine)
    checks.threshold_method(threshold_method)
    checks.at_least("--batch-size", batch_size, 1)
    checks.at_least("--n-boot", n_boot, 10)
    checks.run_folder(run)
    if prepared is not None and data is not None:
        raise ConfigError("give --prepared (the run's own data, elsewhere) or --data (external data), not both")
    if prepared is not None:
        checks.prepared_folder(prepared)
        checks.prepared_fits_run(prepared, run)  # wrong size or labels: refused before torch loads
        if checks.other_data(prepared, run):  # not the data the run was trained on: never re-choose its thresholds
            err_console.print(f"[yellow]note:[/] {prepared} is not the data {run} was trained on: it is evaluated as "
                              "external data with the run's own thresholds (the bundle is unchanged)",
                              highlight=False, soft_wrap=True)
            data = Path(prepared)
    if data is not None:  # --data: every image unless --split; --prepared OTHER: its --split (default test)
        _external(run, data, split or ("test" if prepared is not None else None), label_map, overlap, name,
                  batch_size, n_boot, seed)
        return
    split = split or "test"
    from chestxray.evaluation.evaluate import evaluate_run

    if not console.is_terminal:  # a log file or a pipe: say what is under way (a spinner would print nothing)
        console.print(f"evaluating {run} on {split} ...", highlight=False, soft_wrap=True)
    with console.status(f"evaluating {run} on {split} ...") if console.is_terminal else contextlib.nullcontext():
        result = evaluate_run(run, split=split, tta=tta, threshold_method=threshold_method, batch_size=batch_size,
                              n_boot=n_boot, seed=seed, prepared=prepared,
                              verify_checksums=verify_checksums, ood=ood, engine=engine)
    table, notes = _metrics_table(result)
    print_table(table)
    for note in notes:
        console.print(note, highlight=False)
    mc = result.multiclass
    if mc is not None:
        print_table(_confusion_table(mc))
        console.print(f"multi-class: predicted class = argmax, thresholds do not apply; accuracy {_ci(mc.accuracy)}, "
                      f"balanced accuracy {_ci(mc.balanced_accuracy)}", highlight=False, soft_wrap=True)
    _print_sources(result.by_source)
    probe = result.source_probe
    if probe is not None and probe["auroc"].notna().any():
        shown = ", ".join(f"{r.source} {r.auroc:.2f}" for r in probe.itertuples() if r.auroc == r.auroc
                          and r.auroc is not None)
        console.print(f"source from the model's own features ({split} images; out-of-fold AUROC, this source vs the "
                      f"others): {shown}; near 1 = the model can tell where an image came from, so a finding whose "
                      "prevalence differs between sources can be learnt through the source (source_probe.csv)",
                      highlight=False, soft_wrap=True)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"macro AUROC {fmt(result.macro_auroc)} on {result.summary.n_images} {split} images; "
                  f"outputs in {result.eval_dir}", highlight=False, soft_wrap=True)


def _external(run: Path, data: Path, split: str | None, label_map: Path | None, overlap: str, name: str | None,
              batch_size: int, n_boot: int, seed: int) -> None:
    """evaluate --data: external validation, printed as the run's thresholds beside the site's, per source."""
    from chestxray.cli import checks
    from chestxray.evaluation.external import evaluate_external

    checks.site_data(data)
    result = evaluate_external(run, data, split=split, label_map=label_map, overlap=overlap, name=name,
                               batch_size=batch_size, n_boot=n_boot, seed=seed)
    mapped = ", ".join(f"{m} -> {t}" if m != t else m for m, t in result.mapping.items())
    console.print(f"external data {data}: {result.summary.n_images} images of {result.summary.n_patients} patients; "
                  f"labels compared: {mapped}", highlight=False, soft_wrap=True)
    table, notes = _metrics_table(_as_eval(result, "all sources" if result.by_source else "external"))
    print_table(table)
    for note in notes:
        console.print(note, highlight=False)
    _print_sources(result.by_source)
    for r in result.thresholds.itertuples():
        console.print(f"{r.label}: run threshold {fmt(r.run_threshold)} (sens {fmt(r.run_sensitivity)}, spec "
                      f"{fmt(r.run_specificity)}) | at this site {fmt(r.site_threshold)} (sens {fmt(r.site_sensitivity)}, "
                      f"spec {fmt(r.site_specificity)}; chosen on {r.site_threshold_from})", highlight=False,
                      soft_wrap=True)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"outputs in {result.out_dir}; the bundle is unchanged (a site profile that adopts new thresholds: "
                  f"chestxray calibrate {run} --data {data})", highlight=False, soft_wrap=True)


def _print_sources(by_source: dict[str, Any], most: int = 6) -> None:
    """Per source, the AUROC of the findings it annotates (up to `most`, most positives first), with the interval or
    the minimum-sample rule's words."""
    if by_source:
        console.print("per source (each finding on the images that annotate it):", highlight=False)
    for source, summary in by_source.items():
        rows = sorted([r for r in summary.rows if r.kind == "finding" and r.n], key=lambda r: -r.positives)[:most]
        shown = []
        for r in rows:
            iv = r.auroc
            extra = (f" [{iv.low:.3f}, {iv.high:.3f}]" if iv.low is not None else
                     " (too few patients for an interval)" if iv.value is not None and iv.reason else
                     f" ({iv.reason})" if iv.reason else "")
            shown.append(f"{r.name} {fmt(iv.value)}{extra} ({r.positives}/{r.n} positive)")
        console.print(f"  {source} ({summary.n_images} images): " + "; ".join(shown), highlight=False,
                      soft_wrap=True)


def _as_eval(result: Any, split: str) -> Any:
    """The fields _metrics_table reads, from an external result."""
    from types import SimpleNamespace

    return SimpleNamespace(split=split, threshold_method="the run's own (from its validation split)",
                           summary=result.summary, multiclass=None)


@app.command(help="Write one self-contained HTML report (data, config, curves, metrics with CIs, plots, "
             "explanations) to RUN/report.html; run 'chestxray evaluate RUN' first."
             "\n\nExample: chestxray report runs/densenet121")
@friendly
def report(
    run: Path = typer.Argument(..., help="Run folder with eval/ (from 'chestxray evaluate')."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN/report.html)."),
) -> None:
    from chestxray.cli import checks

    checks.not_data_folder(run, "run folder")
    from chestxray.report.run_report import write_report

    path = write_report(run, out)
    if out is None:  # the run's own report goes to its MLflow run too
        from chestxray.evaluation.tracking import log_run_file

        log_run_file(run, path)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline)", highlight=False, soft_wrap=True)
