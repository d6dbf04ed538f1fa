"""Shared pieces of the command line: consoles, logging setup and the error wrapper."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from chestxray.errors import ChestXrayError
from chestxray.files import disk_full, disk_full_message

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fmt(value: Any, digits: int = 3) -> str:
    """A number for console tables: 'n/a' for None/NaN, floats fixed-point, anything else as text."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


MAX_MESSAGE = 2000  # characters of an error line; what a message quotes is bounded where it is made, this is the net


def _bounded(text: str) -> str:
    """The message on one line, at most MAX_MESSAGE characters (the middle cut out, with its length said)."""
    text = " ".join(text.split()) if "\n" in text else text
    if len(text) <= MAX_MESSAGE:
        return text
    half = MAX_MESSAGE // 2
    return f"{text[:half]} …[{len(text) - 2 * half:,} characters left out]… {text[-half:]}"


def friendly(func: F) -> F:
    """Turn a ChestXrayError into one red line on stderr and exit code 1; other errors keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ChestXrayError as exc:
            err_console.print(f"[bold red]error:[/] {_bounded(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as exc:  # a full disk where the library did not word it: still one line, no traceback
            full = disk_full(exc)
            if full is None:
                raise
            name = getattr(full, "filename", None)
            message = disk_full_message(Path(name).parent if name else Path.cwd(), exc, "what was written before "
                                        "is kept; free some space and run the command again")
            err_console.print(f"[bold red]error:[/] {_bounded(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# MLflow/Lightning log lines that say nothing to a chestxray user (the pyfunc wrapper is ours, saved by MLflow as usual).
_QUIET_MESSAGES = ("not found. Creating it.",)  # MLflow's notices on our pyfunc model: chestxray.models.pyfunc


def _quiet_third_party(record: logging.LogRecord) -> bool:
    """Drop INFO chatter of Lightning/MLflow (they set their own levels at import); keep their warnings."""
    if record.name.startswith(("mlflow", "lightning")) and any(m in record.getMessage() for m in _QUIET_MESSAGES):
        return False
    return record.levelno >= logging.WARNING or not record.name.startswith(("lightning", "mlflow", "alembic"))


def quiet_lightning() -> None:
    """Import Lightning now and quiet it: at import it sets its loggers to INFO with its own console handler."""
    import lightning  # noqa: F401  (must come first, or Lightning's import would undo what follows)

    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if logging.getLogger().handlers:  # ours print its records already; its own console handler would repeat them
        logging.getLogger("lightning").handlers.clear()


def setup_logging(verbose: int) -> None:
    """-v shows INFO, -vv DEBUG; the library itself never configures handlers."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose <= 0:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by MLflow when it is imported
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_third_party)


def _plain(cell: Any) -> str:
    """A table cell as one line of text (multi-line heads and cells joined with spaces)."""
    return " ".join(str(getattr(cell, "plain", cell)).split())


def print_table(table: Any, out: Console | None = None) -> None:
    """Print a rich table whole: as a table when its natural width fits the console (80 columns in a pipe or a log
    file), else as one block per row ("head: value" lines), so a name or a figure is never cut short."""
    from rich.measure import Measurement

    out = out or console
    for column in table.columns:  # a cell that still meets its column's limit folds onto the next line, never "…"
        column.overflow = "fold"
    if Measurement.get(out, out.options.update(max_width=10_000), table).maximum <= out.width:
        out.print(table)
        return
    if table.title:
        out.print(_plain(table.title), highlight=False, soft_wrap=True)
    heads = [_plain(column.header) for column in table.columns]
    for cells in zip(*(column.cells for column in table.columns), strict=True):
        first, *rest = [_plain(c) for c in cells]
        out.print(f"{heads[0]}: {first}", highlight=False, soft_wrap=True)
        for head, value in zip(heads[1:], rest, strict=True):
            out.print(f"  {head}: {value}", highlight=False, soft_wrap=True)
