"""`chestxray predict` and `chestxray export`: score files, folders, patterns and path lists; export to ONNX."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, friendly

TABLE_FORMATS = ("table", "csv", "json", "jsonl")
CELL = 7  # "0.73 +" plus padding: one probability column of the grid layout


def _grid_fits(n_images: int, labels: list[str], thresholds: bool, width: int) -> bool:
    """A finding × image grid fits the console when every finding name and every probability column is whole."""
    fixed = max(len(n) for n in labels) + 3 + (7 if thresholds else 0) + 1
    return fixed + n_images * (CELL + 3) <= width


def _table(rows: list[dict[str, Any]], labels: list[str], thresholds: dict[str, float] | None) -> tuple[Any, list[str]]:
    """Few images: a finding × image grid; otherwise (or when narrow) one row per image with its positive findings.

    Finding names are never cut: long image names are numbered in the grid, with legend lines to print beneath.
    """
    from rich.table import Table

    table, legend = Table(header_style="bold"), []
    if _grid_fits(len(rows), labels, bool(thresholds), console.width):
        table.add_column("finding", no_wrap=True, min_width=max(len(n) for n in labels))
        if thresholds:
            table.add_column("thr", justify="right", no_wrap=True)
        for i, row in enumerate(rows, 1):
            name = row["image_id"] if len(row["image_id"]) <= CELL else f"#{i}"
            if name != row["image_id"]:
                legend.append(f"#{i} = {row['path']}")
            table.add_column(name, justify="right", no_wrap=True)
        for name in labels:
            cells = [f"[bold red]{r[f'p_{name}']:.2f}+[/]" if r.get(f"pred_{name}") == 1
                     else f"[bold red]{r[f'p_{name}']:.2f}<[/]" if r.get("predicted_class") == name
                     else f"{r[f'p_{name}']:.2f}" for r in rows]
            table.add_row(name, *([f"{thresholds[name]:.2f}"] if thresholds else []), *cells)
        return table, legend
    table.add_column("image", overflow="fold", ratio=1)
    width = max(len(n) for n in labels) + 6
    table.add_column("positive findings (p)" if thresholds else "top findings (p)", min_width=width, ratio=2)
    for row in rows:
        if "predicted_class" in row:  # multiclass: the argmax class
            text = f"{row['predicted_class']} {max(row[f'p_{n}'] for n in labels):.2f}"
        elif thresholds:
            hits = [f"{n} {row[f'p_{n}']:.2f}" for n in labels if row.get(f"pred_{n}") == 1]
            text = ", ".join(hits) or "none"
        else:
            text = ", ".join(f"{n} {row[f'p_{n}']:.2f}" for n in sorted(labels, key=lambda n: -row[f"p_{n}"])[:3])
        table.add_row(row["image_id"], text)
    return table, legend


def _summary(tally: Any, out: Path | None, thresholds: bool, hint: str = "") -> str:
    text = f"{tally.scored} image(s) scored, {tally.quarantined} quarantined"
    if tally.n_unusual:
        text += f", {tally.n_unusual} unusual (unlike the training images)"
    if thresholds:
        hits = ", ".join(f"{n} {c}" for n, c in tally.positives.items() if c) or "none"
        text += f"; positives per finding: {hits}"
    return text + (f"; wrote {out}" if out else "") + (f"; {hint}" if hint else "")


def _no_thresholds_hint(model: Path) -> str:
    """Why there are no decisions, and the command that makes them (evaluate chooses thresholds on validation)."""
    run = model.parent if model.name == "bundle" and (model.parent / "config.yaml").is_file() else model
    target = str(run) if (run / "config.yaml").is_file() else "RUN (the run folder that trained this model)"
    return (f"no positive/negative decisions: the model has no thresholds yet; 'chestxray evaluate {target}' "
            "chooses them on the validation split and stores them in the bundle")


@app.command(help="Probabilities per finding for image files (PNG, JPEG, DICOM), folders (recursively), glob "
             "patterns and CSV/TXT lists of paths, positive/negative at the bundle's stored thresholds. Runs a "
             "bundle (on the CPU through its ONNX graph, cached beside it; PyTorch on a GPU) or an exported .onnx "
             "file (onnxruntime, no torch). Unreadable files are "
             "quarantined with the reason; the rest go on. Streams in batches: any number of files fits in memory."
             "\n\nExample: chestxray predict runs/densenet121/bundle scans/ 'more/**/*.dcm' list.csv --out preds.csv"
             "\n\nExample: chestxray predict model.onnx scan.png --format json")
@friendly
def predict(
    model: Path = typer.Argument(..., help="Bundle folder, run folder (holding bundle/) or exported .onnx file."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders, glob patterns or .csv/.txt path lists."),
    fmt: str = typer.Option("table", "--format", "-f", help="What stdout shows: table, csv, json or jsonl."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write every row to this file (.csv, .json, .jsonl)."),
    tta: str = typer.Option(None, "--tta", help="Test-time augmentation: none, hflip, crop or tencrop (default: the mode the "
                            "stored thresholds were chosen with; another one is refused)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images decoded and scored at once."),
    workers: int = typer.Option(4, "--workers", help="Threads decoding files."),
    site: str = typer.Option(None, "--site", help="Site profile made by 'chestxray calibrate' (a name under "
                             "RUN/sites/, or its folder): the site's probabilities and thresholds."),
    engine: str = typer.Option("auto", "--engine", help="What runs a bundle: auto (its ONNX graph through "
                               "onnxruntime on the CPU, exported once and cached beside it; PyTorch on a GPU or "
                               "where the export fails), onnxruntime or torch."),
) -> None:
    from chestxray.cli import checks

    checks.one_of("--format", fmt, TABLE_FORMATS)
    checks.engine(engine)
    checks.tta(tta)
    checks.at_least("--batch-size", batch_size, 1)
    checks.at_least("--workers", workers, 1)
    checks.model_source(model, onnx=True)
    from chestxray.data.tasks import is_multiclass
    from chestxray.errors import DataError
    from chestxray.inference.inputs import expand_inputs
    from chestxray.inference.outputs import RowWriter, Tally, add_decisions
    from chestxray.inference.stream import iter_predictions, open_scorer, problem_rows

    scorer = open_scorer(model, tta=tta, site=site, engine=engine)
    labels, thresholds = scorer.labels, scorer.thresholds
    found = expand_inputs(inputs)
    multiclass = is_multiclass(scorer.card.get("task"))
    hint = _no_thresholds_hint(model) if not thresholds and not multiclass else ""
    if hint:
        err_console.print(f"[yellow]note:[/] {hint}; showing probabilities only", highlight=False, soft_wrap=True)
    tally, rows = Tally(labels), []
    stdout = RowWriter(sys.stdout, fmt, labels) if fmt != "table" else None
    with _file_rows(out, labels) as to_file, _progress(len(found.paths)) as advance:
        frames = iter_predictions(scorer, found.paths, batch_size=batch_size, workers=workers)
        for frame in _with_problems(frames, problem_rows(found.problems, scorer)):
            frame = add_decisions(frame, labels, thresholds) if thresholds else frame
            tally.add(frame)
            for sink in (stdout, to_file):
                if sink is not None:
                    sink.write(frame)
            if stdout is None:
                rows.extend(frame[frame["status"] == "ok"].to_dict("records"))
            advance(len(frame))
    if stdout is not None:
        stdout.close()
    if rows:
        where = f", site {scorer.card['site']}" if scorer.card.get("site") else ""
        title = f"{scorer.card['architecture']} ({Path(scorer.source).name}{where}): probabilities" + (
            f"; red + = positive at the stored threshold (tta {scorer.tta})" if thresholds else
            "; red < = predicted class (argmax; thresholds do not apply)" if multiclass else "")
        table, legend = _table(rows, labels, thresholds)
        for text in (title, table, *legend):
            console.print(text, highlight=False, soft_wrap=isinstance(text, str) and text.startswith("#"))
    for text in tally.unusual:
        err_console.print(f"[yellow]unusual input:[/] {text}: unlike the training images (a photo, another body "
                          "part or view, an inverted image?); its probabilities mean little", highlight=False,
                          soft_wrap=True)
    for reason in tally.reasons:
        err_console.print(f"[yellow]quarantined:[/] {reason}", highlight=False, soft_wrap=True)
    if tally.quarantined > len(tally.reasons):
        err_console.print(f"… and {tally.quarantined - len(tally.reasons)} more quarantined"
                          + (f" (reasons in {out})" if out else "; pass --out FILE to keep every reason"),
                          highlight=False)
    if tally.scored == 0:
        raise DataError(f"none of the {tally.quarantined} input file(s) could be read; see the reasons above")
    (console if fmt == "table" else err_console).print(_summary(tally, out, bool(thresholds), hint), highlight=False,
                                                       soft_wrap=True)


def _with_problems(frames: Any, problems: Any) -> Any:
    if len(problems):
        yield problems
    yield from frames


def _file_rows(out: Path | None, labels: list[str]) -> Any:
    import contextlib

    from chestxray.inference.outputs import open_rows

    return open_rows(out, labels) if out is not None else contextlib.nullcontext(None)


def _progress(total: int) -> Any:
    """A transient progress bar on stderr; yields advance(n)."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    @contextlib.contextmanager
    def bar() -> Any:
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err_console, transient=True) as progress:
            task = progress.add_task("predicting", total=total)
            yield lambda n: progress.advance(task, n)

    return bar()


@app.command(help="Export a bundle: --onnx writes an ONNX model (uint8 pixels in, probabilities out, dynamic "
             "batch, the card in its metadata) that 'chestxray predict model.onnx' runs with onnxruntime; "
             "--mlflow-register NAME logs it as an MLflow pyfunc model in its run and registers it."
             "\n\nExample: chestxray export runs/densenet121 --onnx densenet121.onnx --mlflow-register cxr-densenet")
@friendly
def export(
    bundle: Path = typer.Argument(..., help="Bundle folder or run folder (holding bundle/)."),
    onnx: Path = typer.Option(None, "--onnx", help="ONNX file to write."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset version."),
    dynamo: bool = typer.Option(False, "--dynamo", help="Use the torch.export-based exporter (slower)."),
    mlflow_register: str = typer.Option(None, "--mlflow-register",
                                        help="Log the bundle as an MLflow pyfunc model and register it as NAME."),
    mlflow_uri: str = typer.Option(None, "--mlflow-uri", help="Store for a bundle outside a run (default: mlflow.db beside the bundle folder)."),
    site: str = typer.Option(None, "--site", help="With --onnx: put this site profile (chestxray calibrate; a name "
                             "under RUN/sites/) into the file, so it scores with the site's probabilities and "
                             "thresholds."),
) -> None:
    from chestxray.cli import checks
    from chestxray.errors import ConfigError

    if onnx is None and not mlflow_register:
        raise ConfigError("nothing to export; pass --onnx FILE.onnx and/or --mlflow-register NAME")
    if site and onnx is None:
        raise ConfigError("--site goes into an ONNX export; pass --onnx FILE.onnx (the MLflow model carries no site "
                          "profile: serve the run with --site, or predict with --site, instead)")
    checks.model_source(bundle)
    if onnx is not None:
        from chestxray.deploy.onnx_export import export_onnx

        with err_console.status(f"exporting {bundle} to ONNX ..."):
            path = export_onnx(bundle, onnx, opset=opset, dynamo=dynamo, site=site)
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}, dynamic batch; "
                      f"input uint8 pixels, output probabilities"
                      + (f"; site profile {site!r} in its metadata" if site else "") + ")",
                      highlight=False, soft_wrap=True)
    if mlflow_register:
        from chestxray.deploy.mlflow_ui import register_bundle

        info = register_bundle(bundle, mlflow_register, mlflow_uri)
        console.print(f"registered {info.model_uri} as MLflow model {mlflow_register!r} "
                      f"(version {info.registered_model_version})", highlight=False, soft_wrap=True)
