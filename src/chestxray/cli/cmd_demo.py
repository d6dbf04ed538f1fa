"""`chestxray demo`: the whole chain on the bundled samples, one command."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from chestxray.cli import app
from chestxray.cli.common import console, fmt, friendly, quiet_lightning


@app.command(help=(
    "Run catalog → split → prepare → train → evaluate → explain → report on the bundled real samples "
    "(Kaggle pneumonia, binary; NIH ChestX-ray14, 14 findings) and print a results table.\n\n"
    "Example: chestxray demo --out demo-output"
))
@friendly
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for catalogs, prepared shards, runs and reports."),
    data: Path = typer.Option(None, help="Folder holding the sample collections (default: $CHESTXRAY_DATA or ../shared/data)."),
    synthetic: bool = typer.Option(False, help="Use generated SYNTHETIC images instead of real X-rays."),
    epochs: int = typer.Option(8, help="Training epochs per task."),
    size: int = typer.Option(64, help="Image size in pixels (square)."),
    model: str = typer.Option("cnn-small", help="Model name (see 'chestxray train --help')."),
    seed: int = typer.Option(0, help="One seed for split, initialisation and data order."),
    mlflow: bool = typer.Option(True, help="Track the runs in MLflow (a local SQLite store under OUT/mlruns)."),
) -> None:
    from rich.table import Table

    from chestxray.workflows.demo import DemoSettings, run_demo

    quiet_lightning()

    start = time.perf_counter()
    settings = DemoSettings(epochs=epochs, size=size, model=model, seed=seed, mlflow=mlflow)

    def announce(name: str, description: str) -> None:
        console.rule(f"[bold]{name}[/]: {description}")

    outcomes = run_demo(out, data_root=data, synthetic=synthetic, settings=settings, on_task=announce)
    table = Table(title="test split: AUROC (macro over findings), 95% CI by patient bootstrap")
    for column in ("task", "train/val/test", "labels", "test AUROC", "95% CI", "s"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        counts = "/".join(str(o.counts.get(s, 0)) for s in ("train", "val", "test"))
        name = f"{o.name} [red](SYNTHETIC)[/]" if o.synthetic else o.name
        table.add_row(name, counts, str(len(o.labels)), fmt(o.auroc), f"{fmt(o.auroc_low)}–{fmt(o.auroc_high)}",
                      f"{o.seconds:.0f}")
    console.print(table)
    for o in outcomes:
        if o.extra:
            values = (f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in o.extra.items())
            console.print(f"{o.name} at the validation-chosen threshold: " + ", ".join(values), soft_wrap=True)
    for o in outcomes:
        console.print(f"report ({o.name}): {o.report}", soft_wrap=True)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s", soft_wrap=True)
