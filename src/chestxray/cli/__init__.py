"""The command line: a thin Typer layer over the library. Each area registers its commands in its own module;
this one lists them in pipeline order, grouped, with the one-line summaries `chestxray --help` shows (docs/cli.md
lists the same, checked by tests/test_docs.py)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

import chestxray
from chestxray.cli.common import setup_logging

# (panel, ((command, one-line summary), ...)) in the order `chestxray --help` shows them.
COMMANDS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Start here", (
        ("demo", "The whole chain on the bundled samples (or --synthetic images), with a results table."),
    )),
    ("The chain, in order", (
        ("catalog", "One table, one row an image (path, patient, labels, split by patient), from a collection."),
        ("explore", "Counts per finding and split, co-occurrence, a sample grid and the shortcut check."),
        ("prepare", "Decode every image once into 8-bit gray squares in tar shards + manifest.json."),
        ("verify", "Check a prepared folder's shards against its manifest (sizes, --checksums)."),
        ("train", "Train a model on a prepared folder into a run folder (checkpoints, history, bundle)."),
        ("evaluate", "Thresholds on validation; metrics with patient-bootstrap CIs on a split (RUN/eval/)."),
        ("audit", "Subgroups (sex, age, view, site …) and shortcut checks of an evaluated run, as a reviewer would."),
        ("explain", "Grad-CAM / Integrated Gradients overlays, scored against expert boxes with --boxes."),
        ("report", "One self-contained HTML report of a run (RUN/report.html)."),
        ("calibrate", "A site profile for a new hospital: recalibrated probabilities and thresholds, bundle unchanged."),
        ("predict", "Probabilities and decisions for new images, folders, globs and lists."),
        ("export", "An ONNX file, or an MLflow registered model, from a bundle."),
        ("serve", "A web page and JSON API for one model."),
        ("ui", "The MLflow UI on the project's store."),
    )),
    ("Compare and search", (
        ("study", "Compare methods: a grid over seeds, evaluated on test, with paired tests (study.html)."),
        ("compare-runs", "Paired comparison of two evaluated runs (Obuchowski clustered test, paired patient bootstrap)."),
        ("compare", "Quick screen before a study: several models, one seed, validation AUROC and speed only."),
        ("tune", "Search training settings with Optuna on validation AUROC."),
    )),
    ("Tools", (
        ("models", "The registered architectures, and how to use any timm model."),
        ("weights", "Fetch pretrained weights into the local cache (for offline nodes), list what is cached."),
        ("synth", "Write a clearly labelled SYNTHETIC collection in NIH layout, for tests and trials."),
    )),
)
ORDER = [name for _, commands in COMMANDS for name, _ in commands]


class PipelineGroup(TyperGroup):
    """Lists the commands in pipeline order (click sorts them by name; Typer keeps registration order)."""

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(self.commands, key=lambda name: (rank.get(name, len(rank)), name))


app = typer.Typer(
    name="chestxray",
    help="Train, evaluate, explain and deploy chest X-ray classifiers: catalog → prepare → train → evaluate → "
         "explain → report → predict / serve. Every command has --help with examples.\n\nExample: chestxray demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=PipelineGroup,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chestxray {chestxray.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    setup_logging(verbose)


def _register() -> None:
    """Import the command modules so their @app.command decorators run (each module owns one area), then give each
    command its panel and one-line summary."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}")
    where = {name: (panel, summary) for panel, commands in COMMANDS for name, summary in commands}
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        command.rich_help_panel, command.short_help = where.get(name, ("Tools", command.short_help))
    for group in app.registered_groups:
        group.rich_help_panel, group.short_help = where.get(group.name, ("Tools", None))


_register()


def main() -> None:
    app()
