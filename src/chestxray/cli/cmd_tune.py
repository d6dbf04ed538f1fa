"""`chestxray tune`: hyperparameter search with Optuna (area: tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, fmt, friendly, print_table, quiet_lightning

STORAGE_ENV = "CHESTXRAY_TUNE_STORAGE"


@app.command(help="Search training settings with Optuna (TPE by default) on a PREPARED folder: each trial is a "
             "run folder under OUT/trials and an MLflow child run of the study's parent run, stopped early by a "
             "pruner on validation AUROC per epoch. The objective is validation AUROC; the test split is never "
             "read. At the end OUT/best.yaml holds the best trial's config (chestxray train --config OUT/best.yaml "
             "trains it again) and OUT/tune_report.html the report. Running the same command again continues the "
             "study. Fixed settings come from --config; the search space from --space (YAML; without it the "
             "default space in docs/tuning.md).\n\n"
             "Example: chestxray tune runs/prepared --config base.yaml --space space.yaml --trials 40 "
             "--timeout 2h --out runs/tune1\n\n"
             "Example (4 processes on this machine): chestxray tune runs/prepared --trials 40 --workers 4 "
             "--out runs/tune1\n\n"
             "Example (cluster; every SLURM job runs the same line; the password comes from ~/.pgpass or "
             "PGPASSWORD, never the command line, where `ps` shows it): chestxray tune /shared/prepared --trials 200 "
             "--storage postgresql://tune@dbhost:5432/optuna --study-name nih-dn121 --out /shared/tune1")
@friendly
def tune(
    ctx: typer.Context,
    prepared: Path = typer.Argument(..., help="PREPARED folder (from 'chestxray prepare')."),
    space: Optional[Path] = typer.Option(None, "--space", "-s", help="Search-space YAML (default: the built-in "
                                         "space)."),
    trials: int = typer.Option(20, "--trials", "-n", help="Complete + pruned trials the study should hold."),
    out: Path = typer.Option(Path("runs/tune"), "--out", "-o", help="Study folder: trials/, best.yaml, report, "
                             "and study.db (the default storage)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML of fixed settings for every trial."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Fixed architecture (unless searched)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="Epochs per trial (the pruner's resource)."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Start no new trial after this long "
                                          "(e.g. 45m, 2h, 3600)."),
    storage: Optional[str] = typer.Option(None, "--storage", envvar=STORAGE_ENV, show_envvar=True,
                                          help="Optuna storage URL (default sqlite:///OUT/study.db; "
                                          "postgresql://user@host:5432/db for clusters, password in ~/.pgpass or "
                                          "PGPASSWORD, or the whole URL in the environment variable)."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name (default: the OUT folder's "
                                             "name)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Trial processes on this machine sharing the storage."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe | random (default: the space's, tpe)."),
    pruner: Optional[str] = typer.Option(None, "--pruner", help="median | hyperband | none (default: the "
                                         "space's, median)."),
    heartbeat: int = typer.Option(60, "--heartbeat", help="Seconds between a running trial's heartbeats; a trial "
                                  "silent for twice that is failed (its process died)."),
    mlflow: Optional[bool] = typer.Option(None, "--mlflow/--no-mlflow", help="Mirror trials to MLflow."),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="Tracking URI (default: OUT/trials/"
                                      "mlflow.db, the parent run and every trial together; browse it with "
                                      "'chestxray ui --store OUT')."),

) -> None:
    from rich.table import Table

    from chestxray.cli import checks

    checks.one_of("--sampler", sampler, checks.SAMPLERS)
    checks.one_of("--pruner", pruner, checks.PRUNERS)
    checks.model_name(model)
    checks.prepared_folder(prepared)
    from chestxray.training.config import resolve_config
    from chestxray.workflows.search_space import read_space
    from chestxray.workflows.tune import TuneSettings, parse_duration
    from chestxray.workflows.tune import tune as run_tune

    quiet_lightning()
    from chestxray.workflows.tune_storage import has_password

    source = ctx.get_parameter_source("storage")  # typer's own click: compare the enum's name
    if storage and has_password(storage) and getattr(source, "name", "") == "COMMANDLINE":
        err_console.print(f"warning: the password in --storage is visible to every user of this machine (ps, "
                          f"/proc); put it in ~/.pgpass or PGPASSWORD, or the whole URL in ${STORAGE_ENV}",
                          highlight=False, soft_wrap=True)
    settings = {k: v for k, v in dict(prepared=str(prepared), model=model, epochs=epochs, mlflow=mlflow,
                                      mlflow_uri=mlflow_uri).items() if v is not None}
    base = resolve_config(config, where="command line", **settings)
    tune_settings = TuneSettings(base=base, space=read_space(space, base), out=str(out), trials=trials,
                                 storage=storage or "", study_name=study_name or "", workers=workers,
                                 timeout=parse_duration(timeout), sampler=sampler, pruner=pruner, heartbeat=heartbeat)
    result = run_tune(tune_settings)

    if result.best_params:
        view = Table(title=f"best trial {result.best_number}: val AUROC {fmt(result.best_value, 4)}")
        view.add_column("parameter")
        view.add_column("value", justify="right")
        for name, value in result.best_params.items():
            view.add_row(name, fmt(value, 6) if isinstance(value, float) else str(value))
        print_table(view)
    best = f"best val AUROC {fmt(result.best_value, 4)} (trial {result.best_number}) → {result.best_yaml}" \
        if result.best_yaml else "no trial completed yet"
    console.print(f"study {result.study_name}: {result.complete} complete, {result.pruned} pruned, "
                  f"{result.failed} failed in {result.seconds:.0f} s; {best}; report {result.report}",
                  highlight=False, soft_wrap=True)
