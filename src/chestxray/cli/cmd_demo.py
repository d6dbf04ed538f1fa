"""`chestxray demo`: the whole chain on the bundled samples, one command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from chestxray.cli import app
from chestxray.cli.common import console, fmt, friendly, print_table, quiet_lightning
from chestxray.training.config import PRECISIONS

if TYPE_CHECKING:
    from rich.table import Table

    from chestxray.workflows.demo import DemoOutcome


@app.command(help=(
    "Run catalog → split → prepare → train → evaluate → explain → report on the bundled real samples "
    "(Kaggle pneumonia, binary; NIH ChestX-ray14, 14 findings) and print a results table. On Kaggle the three "
    "recipes of the pneumonia study are compared (cnn-small from scratch, EfficientNet-Lite0 ImageNet backbone "
    "frozen, Lite0 fine-tuned; the weights need no network); NIH trains with the recipe that wins on validation.\n\n"
    "Example: chestxray demo --out demo-output"
))
@friendly
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for catalogs, prepared shards, runs and reports."),
    data: Path = typer.Option(None, help="Folder holding the sample collections (default: $CHESTXRAY_DATA or ../shared/data)."),
    synthetic: bool = typer.Option(False, help="Use generated SYNTHETIC images instead of real X-rays."),
    epochs: int = typer.Option(None, help="Training epochs of every recipe (default: each recipe's own budget)."),
    size: int = typer.Option(64, help="Image size in pixels (square)."),
    model: str = typer.Option(None, help="Train only this model from scratch instead of comparing the recipes."),
    seed: int = typer.Option(0, help="One seed for split, initialisation and data order."),
    mlflow: bool = typer.Option(True, help="Track the runs in MLflow (a local SQLite store under OUT/mlruns)."),
    precision: str = typer.Option("auto", help="auto (bf16-mixed on a CPU or GPU with native bf16, else fp32) | "
                                  "32-true | bf16-mixed | 16-mixed; the README's figures are bf16-mixed."),
) -> None:
    from dataclasses import replace

    from chestxray.cli import checks

    if data is not None and not data.is_dir():
        from chestxray.errors import DataError

        raise DataError(f"--data {data}: no sample collections there (no such folder); pass the shared data folder, "
                        "or leave --data out to use $CHESTXRAY_DATA or ../shared/data")
    checks.model_name(model)
    checks.at_least("--size", size, 16)
    checks.at_least("--epochs", epochs, 1)
    checks.one_of("--precision", precision, PRECISIONS)
    from rich import box
    from rich.table import Table

    from chestxray.workflows.demo import (
        DEFAULT_RECIPES,
        DemoSettings,
        RecipeRun,
        run_demo,
    )

    quiet_lightning()
    import logging

    steps = logging.getLogger("chestxray.workflows.demo")  # its steps say what the minutes are spent on
    if steps.getEffectiveLevel() > logging.INFO:
        steps.setLevel(logging.INFO)

    start = time.perf_counter()
    if model is not None:
        recipes: tuple[RecipeRun, ...] = (RecipeRun("scratch", model, DemoSettings.lr, epochs or DemoSettings.epochs),)
    else:
        recipes = tuple(replace(r, epochs=epochs) for r in DEFAULT_RECIPES) if epochs else DEFAULT_RECIPES
    settings = DemoSettings(size=size, seed=seed, mlflow=mlflow, recipes=recipes, precision=precision)

    def announce(name: str, description: str) -> None:
        if console.is_terminal and len(name) + len(description) + 8 <= console.width:
            console.rule(f"[bold]{name}[/]: {description}")
        else:  # a rule cuts a long title short ("(b…"); in a log the plain line is whole
            console.print(f"== {name}: {description}", highlight=False, soft_wrap=True)

    outcomes = run_demo(out, data_root=data, synthetic=synthetic, settings=settings, on_task=announce)
    for o in outcomes:
        if len(o.recipes) > 1:
            print_table(_recipe_table(o))
    table = Table(title="test split: AUROC (macro over findings), 95% CI by patient bootstrap", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    for column in ("task", "images\ntrain/val/test", "recipe\n(model)", "val\nAUROC", "test AUROC\n95% CI", "s"):
        table.add_column(column, no_wrap=True)
    for o in outcomes:
        counts = "/".join(str(o.counts.get(s, 0)) for s in ("train", "val", "test"))
        name = f"{o.name}\n{len(o.labels)} label(s)" + ("\n[red]SYNTHETIC[/]" if o.synthetic else "")
        chosen = next(r for r in o.recipes if r.recipe == o.chosen)
        val = fmt(chosen.val_auroc) + {True: "", None: "\n[yellow]no CI[/]"}.get(o.above_chance, "\n[red]≈ chance[/]")
        table.add_row(name, counts, f"{o.chosen}\n({chosen.model})", val,
                      f"{fmt(o.auroc)}\n{_ci_text(o.auroc_low, o.auroc_high)}", f"{o.seconds:.0f}")
    print_table(table)
    for o in outcomes:
        if o.above_chance is False:
            console.print(f"[red]{o.name}: the chosen model has NOT clearly learned: its validation AUROC's 95% CI "
                          "reaches 0.5 (chance); do not read its test figures as skill[/]", soft_wrap=True)
        elif o.above_chance is None:
            console.print(f"[yellow]{o.name}: whether the chosen model learned cannot be told from validation: "
                          f"{o.val_reason}[/]", soft_wrap=True, highlight=False)
    for o in outcomes:
        if o.extra:
            values = (f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in o.extra.items())
            console.print(f"{o.name} at the validation-chosen threshold: " + ", ".join(values), soft_wrap=True)
    for o in outcomes:
        console.print(f"report ({o.name}): {o.report}", soft_wrap=True)
    for precision, reason in sorted({(r.precision, r.precision_reason) for o in outcomes for r in o.recipes}):
        console.print(f"precision: {precision or 'unknown'} — {reason or 'not recorded'}; bf16 and fp32 training give "
                      "somewhat different figures (the README shows both)", highlight=False, soft_wrap=True)
    reused = [r for o in outcomes for r in o.recipes if r.reused]
    if reused:
        console.print(f"reused {len(reused)} finished run(s) of an earlier demo with the same settings and data "
                      f"(training seconds are theirs); delete {out} to train again", highlight=False, soft_wrap=True)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s", soft_wrap=True)


def _ci_text(low: float | None, high: float | None) -> str:
    """'0.61–0.68', or 'no CI: too few' where the minimum-sample rule withheld the interval."""
    return "no CI: too few" if low is None or high is None else f"{fmt(low)}–{fmt(high)}"


def _recipe_table(outcome: "DemoOutcome") -> "Table":
    """The recipes side by side on one task: validation (which chooses) and test figures, training time."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"{outcome.name}: three recipes, same data and seed; the winner is chosen on VALIDATION AUROC;"
                  " operating point at the validation-chosen threshold; s = training seconds", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    for column in ("recipe\nmodel", "val AUROC\n95% CI", "test AUROC\n95% CI", "sens", "spec", "FN", "FP", "s"):
        table.add_column(column, no_wrap=True)
    for r in outcome.recipes:
        mark = " ✓" if r.recipe == outcome.chosen else ""
        op = r.extra or {}
        table.add_row(f"{r.recipe}{mark}\n{r.model}", f"{fmt(r.val_auroc)}\n{_ci_text(r.val_low, r.val_high)}",
                      f"{fmt(r.auroc)}\n{_ci_text(r.auroc_low, r.auroc_high)}", fmt(op.get("sensitivity")),
                      fmt(op.get("specificity")), fmt(op.get("false negatives")), fmt(op.get("false positives")),
                      f"{r.train_seconds:.0f}")
    return table
