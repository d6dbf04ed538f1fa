"""The command line: a thin Typer layer over the library. Each area registers its commands in its own module."""

from __future__ import annotations

import typer

import chestxray
from chestxray.cli.common import setup_logging

app = typer.Typer(
    name="chestxray",
    help="Train, evaluate, explain and deploy chest X-ray classifiers.\n\nExample: chestxray demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    """Import the command modules so their @app.command decorators run (each module owns one area)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register()


def main() -> None:
    app()
