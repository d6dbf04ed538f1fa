"""Commands for comparing methods: `compare-runs` (two evaluated runs, paired tests)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from chestxray.cli import app
from chestxray.cli.common import console, fmt, friendly, print_table


@app.command("compare-runs", help="Paired comparison of two evaluated runs on the same split: AUROC difference per "
             "finding with Obuchowski's clustered test (patients as clusters; Holm-corrected over the findings "
             "tested), a paired patient-bootstrap interval, and the macro difference; a finding with fewer than 10 "
             "positive or 10 negative patients gets words instead of a p-value (docs/statistics.md) — the comparison "
             "'chestxray study' makes between its selected runs, for two runs you trained yourself."
             "\n\nExample: chestxray compare-runs runs/finetune runs/frozen --out finetune-vs-frozen.csv")
@friendly
def compare_runs_cmd(
    run_a: Path = typer.Argument(..., help="First run folder (evaluated: RUN/eval/predictions.csv)."),
    run_b: Path = typer.Argument(..., help="Second run folder, evaluated on the same split."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Paired bootstrap replicates (patients resampled)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV of the per-finding table (and a .json beside it)."),
) -> None:
    from chestxray.cli import checks
    from chestxray.evaluation.compare_runs import compare_runs
    from chestxray.evaluation.statistics import CLUSTERED_TEST
    from chestxray.files import write_csv, write_json

    checks.at_least("--n-boot", n_boot, 10)

    result = compare_runs(run_a, run_b, n_boot=n_boot, seed=seed)
    print_table(comparison_table(result))
    console.print(f"p: {CLUSTERED_TEST}; p Holm: Holm-adjusted over the findings tested; pts +/-: patients with / "
                  "without the finding", highlight=False, soft_wrap=True)
    for note in comparison_notes(result):
        console.print(note, highlight=False, soft_wrap=True)
    console.print(result.headline(), highlight=False, soft_wrap=True)
    console.print(result.method, highlight=False, soft_wrap=True, style="dim")
    if out is not None:
        write_csv(out, result.table)
        write_json(Path(out).with_suffix(".json"), result.to_dict())
        console.print(f"wrote {out}", highlight=False)


def _has(value: object) -> bool:
    return value is not None and value == value


def _short(value: float) -> str:
    """'+.210' (a signed difference without the leading zero, so the table fits 80 columns)."""
    return f"{value:+.3f}".replace("0.", ".")


def comparison_table(result: Any) -> Any:
    """The per-finding table of a comparison at 80 columns: patients with/without the finding, AUROCs, difference,
    bootstrap CI, the test's p and Holm's; a row without a test says 'too few*' (or '—*') and the reason is printed
    below the table (comparison_notes)."""
    from rich import box

    from chestxray.evaluation.compare_runs import format_p

    table = Table(title=f"{result.name_a} vs {result.name_b} on {result.split} ({result.n_images} images, "
                        f"{result.n_patients} patients); diff = a - b", header_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=0, show_edge=False)
    for col in ("finding", "pts +/-", "AUROC a", "AUROC b", "diff", "95% CI", "p", "p Holm"):
        table.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)
    for r in result.table.to_dict("records"):
        ci = f"{_short(r['low'])}–{_short(r['high'])}" if _has(r["low"]) else "—"
        words = str(r["test"])
        p = format_p(r["p"]) if _has(r["p"]) else ("too few*" if words.startswith(("too few", "no test")) else "—*")
        ph = format_p(r["p_holm"]) if _has(r["p_holm"]) else "—"
        diff = _short(r["diff"]) if _has(r["diff"]) else "n/a"
        sides = (f"{int(r['positive_patients'])}/{int(r['negative_patients'])}" if _has(r["positive_patients"])
                 else "")
        table.add_row(r["finding"], sides, fmt(r["auroc_a"]), fmt(r["auroc_b"]), diff, ci, p, ph)
    return table


def comparison_notes(result: Any) -> list[str]:
    """'* finding: why it has no test' for each row without a p-value."""
    return [f"* {r['finding']}: {r['test']}" for r in result.table.to_dict("records") if not _has(r["p"])]


def group_table(done: Any, groups: Any, select: str) -> Table:
    """The study's group table: val and test AUROC mean ± sd and the selected run's test AUROC [CI]; for a k-fold
    study the fold mean ± sd and the pooled out-of-fold AUROC [CI]."""
    import pandas as pd

    kfold = bool(done.folds)
    title = (f"study {done.out}: {len(done.runs)} runs, {done.folds}-fold cross-validation by patient" if kfold else
             f"study {done.out}: {len(done.runs)} runs, one selected per group by {select}")
    table = Table(title=title, header_style="bold")
    heads = (("group", "val AUROC", "fold AUROC mean ± sd", "pooled out-of-fold AUROC [95% CI]") if kfold else
             ("group", "val AUROC", "test AUROC", "selected", "its test AUROC [95% CI]"))
    for col in heads:
        table.add_column(col)
    for g in groups.to_dict("records"):
        estimate = (f"{fmt(g['selected_test_auroc'])} [{fmt(g['selected_test_low'])}, {fmt(g['selected_test_high'])}]"
                    if pd.notna(g["selected_test_low"]) else f"{fmt(g['selected_test_auroc'])} (no CI: "
                    f"{g['selected_test_note'] if isinstance(g['selected_test_note'], str) else 'too few patients'})")
        val = f"{fmt(g['val_auroc_mean'])} ± {fmt(g['val_auroc_sd'])}"
        if kfold:
            table.add_row(g["group"], val, f"{fmt(g['fold_auroc_mean'])} ± {fmt(g['fold_auroc_sd'])}", estimate)
        else:
            table.add_row(g["group"], val, f"{fmt(g['test_auroc_mean'])} ± {fmt(g['test_auroc_sd'])}",
                          g["selected_run"], estimate)
    return table


def _list(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",")] if text is not None else None


@app.command(help="Train every combination of a grid (models, recipes, augmentation, seeds, any train setting) as "
             "normal run folders, evaluate each on test with validation thresholds, select one run per group on "
             "validation only, compare the selected runs (Obuchowski's clustered test + paired patient bootstrap; "
             "Holm within and across pairs) and write DIR/study.html. "
             "Re-running skips finished runs and resumes stopped ones. The command for comparing methods: "
             "'compare-runs' makes the same paired test for two runs of your own, 'compare' is a quick "
             "validation-only screen."
             "\n\nExample: chestxray study data/prepared --models cnn-small,resnet18 --seeds 0,1,2 --epochs 5 "
             "--lr 1e-3,3e-4 --out runs/study1"
             "\n\nExample: chestxray study data/prepared --grid study.yaml --out runs/study1 --max-parallel 2"
             "\n\nExample (5-fold cross-validation by patient, for a small collection): chestxray study data/prepared "
             "--models cnn-small,resnet18 --folds 5 --epochs 5 --out runs/cv5")
@friendly
def study(
    prepared: Path = typer.Argument(..., help="PREPARED folder (from chestxray prepare)."),
    out: Path = typer.Option(..., "--out", "-o", help="Study folder (runs/, tables, study.html)."),
    grid: Path = typer.Option(None, "--grid", help="YAML: setting -> value or list (models, recipes, seeds, any "
                              "train setting); 'combinations:' pairs settings, e.g. recipe with model (format: "
                              "docs/studies/pneumonia.yaml)."),
    models: str = typer.Option(None, "--models", help="Comma-separated models, e.g. cnn-small,resnet18."),
    recipes: str = typer.Option(None, "--recipes", help="Comma-separated recipes: scratch, frozen, finetune."),
    augment: str = typer.Option(None, "--augment", help="Comma-separated augmentation policies."),
    seeds: str = typer.Option(None, "--seeds", help="Comma-separated seeds (default 0)."),
    sets: list[str] = typer.Option([], "--set", help="Any train setting as NAME=V1,V2 (repeatable), e.g. "
                                   "--set lr=1e-3,3e-4 --set epochs=5."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML of settings shared by every run (as for train; "
                                "the grid's values override it)."),
    epochs: str = typer.Option(None, "--epochs", "-e", help="Epochs per run (a comma list makes it a grid axis; "
                               "the same for the flags below)."),
    batch_size: str = typer.Option(None, "--batch-size", "-b", help="Batch size."),
    lr: str = typer.Option(None, "--lr", help="Peak learning rate, e.g. 1e-3 or 1e-3,3e-4."),
    weight_decay: str = typer.Option(None, "--weight-decay", help="AdamW weight decay."),
    patience: str = typer.Option(None, "--patience", help="Early-stopping patience (0: off)."),
    precision: str = typer.Option(None, "--precision", help="auto | 32-true | 16-mixed | bf16-mixed."),
    num_workers: str = typer.Option(None, "--num-workers", help="Data loader processes per run."),
    max_minutes: str = typer.Option(None, "--max-minutes", help="Training-time cap per run."),
    select: str = typer.Option("val_auroc", "--select", help="Pick one run per group on validation: val_auroc "
                               "(highest) or val_loss (lowest)."),
    max_parallel: int = typer.Option(1, "--max-parallel", help="Runs trained at once (separate processes)."),
    only: int = typer.Option(None, "--only", help="Train run number I only (0-based; one SLURM array task), no "
                             "tables."),
    list_runs: bool = typer.Option(False, "--list", help="Print the runs the grid makes (numbered) and exit."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for CIs and comparisons."),
    folds: int = typer.Option(None, "--folds", help="k-fold cross-validation by patient: every image of PREPARED "
                              "is dealt to K folds by patient (seeded, balanced by images, blind to the labels); each "
                              "run is trained K times, tested on the fold it never saw; the table gives the fold "
                              "mean ± sd and the pooled out-of-fold AUROC with its patient-bootstrap CI "
                              "(docs/studies.md)."),
    fold_seed: int = typer.Option(0, "--fold-seed", help="Seed of the fold assignment (with --folds)."),
    yes: bool = typer.Option(False, "--yes", help=f"Allow a grid of more than {200} runs."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log runs to MLflow under one parent run."),
) -> None:
    from chestxray.cli import checks
    from chestxray.cli.common import quiet_lightning
    from chestxray.errors import ConfigError

    checks.prepared_folder(prepared)
    checks.at_least("--n-boot", n_boot, 10)
    if folds is not None:
        from chestxray.data.folds import check_folds

        check_folds(folds)
    for name in _list(models) or []:
        checks.model_name(name, "--models")
    from chestxray.workflows.study import expand, normalise_grid, read_grid, run_study

    raw = read_grid(grid) if grid is not None else {}
    for key, value in (("models", models), ("recipes", recipes), ("augment", augment), ("seeds", seeds)):
        if value is not None:
            raw[key] = _list(value)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected NAME=V1,V2 (e.g. --set lr=1e-3,3e-4)")
        name, values = item.split("=", 1)
        raw[name.strip().replace("-", "_")] = _list(values)
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "patience": patience,
             "precision": precision, "num_workers": num_workers, "max_minutes": max_minutes}
    for name, value in flags.items():
        if value is not None:
            if name in raw:
                raise ConfigError(f"{name} is given twice (--{name.replace('_', '-')} and --set/--grid); keep one")
            raw[name] = _list(value)
    where = str(grid) if grid is not None else "study flags"
    from chestxray.training.config import read_settings_file

    # runs report progress as one plain line per epoch in a log or a pipe; on a terminal the 'finished' lines suffice
    base = {**(read_settings_file(config) if config is not None else {}), "mlflow": mlflow,
            "progress": not sys.stdout.isatty()}
    spec = expand(prepared, normalise_grid(raw, where), out, base=base, yes=yes, select=select, n_boot=n_boot)
    if folds is not None:
        from chestxray.workflows.crossval import expand_folds

        spec = expand_folds(spec, folds, fold_seed)
    if list_runs:
        for i, run in enumerate(spec.runs):
            console.print(f"{i}\t{run.name}\t{run.group}", highlight=False, soft_wrap=True)
        return
    if max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {max_parallel}")
    quiet_lightning()
    done = run_study(spec, max_parallel=max_parallel, only=only,
                     on_run=lambda row: console.print(f"finished {row['run']}: val AUROC {fmt(row['val_auroc'])}, "
                                                      f"test AUROC {fmt(row['test_auroc'])}", highlight=False))
    if only is not None:
        console.print(f"run {only} ({spec.runs[only].name}) finished; run the same command without --only to "
                      "collect the tables", highlight=False, soft_wrap=True)
        return
    import pandas as pd

    from chestxray.files import read_csv

    groups = read_csv(done.out / "study_groups.csv")
    print_table(group_table(done, groups, select))
    if done.folds:
        console.print(f"pooled out-of-fold: the {done.folds} held-out folds together, every patient scored once by the "
                      "model that never saw it (the headline: all patients, one interval); fold mean ± sd: the fold "
                      "models' spread, not a CI (docs/studies.md)", highlight=False, soft_wrap=True, style="dim")
    for path in sorted(done.out.glob("study_cross_source_*.csv")):  # a merged dataset: train source x test source
        matrix = read_csv(path)
        columns = [c for c in matrix.columns if c not in ("trained_on", "run") and f"{c} auroc" in matrix.columns]
        view = Table(title=f"{path.stem[len('study_cross_source_'):]}: AUROC (95% CI) by training source (rows) and "
                     f"test source (columns); {path.with_suffix('.png').name}", header_style="bold")
        view.add_column("trained on")
        for c in columns:
            view.add_column(f"test: {c}")
        for r in matrix.to_dict("records"):
            view.add_row(str(r["trained_on"]), *[str(r[c]) for c in columns])
        print_table(view)
    comparisons = done.out / "study_comparisons.csv"
    if comparisons.stat().st_size > 1:
        table = read_csv(comparisons)
        for sentence in table["sentence"]:
            console.print(sentence, highlight=False, soft_wrap=True)
        if "family" in table and len(table) > 1:
            console.print(f"multiplicity: each p is Holm-corrected over its pair's findings; {table['family'].iloc[0]} "
                          "gives the 'Holm-adjusted over … pairs' p", highlight=False, soft_wrap=True, style="dim")
    console.print(f"wrote {done.out / 'study.html'} and study_runs.csv, study_groups.csv, study_comparisons.csv",
                  highlight=False, soft_wrap=True)
