"""The command line shell: version, help with an example on every command, python -m, error wrapper."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import chestxray
from chestxray.cli import app
from chestxray.cli.common import friendly
from chestxray.errors import DataError

runner = CliRunner()


def _command_paths() -> list[list[str]]:
    """Every leaf command as its argv prefix, walking sub-groups (e.g. catalog nih)."""
    import typer.main

    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd, prefix):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*prefix, name])
        else:
            paths.append(prefix)

    walk(root, [])
    return paths


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert chestxray.__version__ in result.output


def test_python_dash_m() -> None:
    out = subprocess.run([sys.executable, "-m", "chestxray", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"chestxray {chestxray.__version__}"


@pytest.mark.parametrize("argv", _command_paths(), ids=lambda p: " ".join(p))
def test_every_command_has_help_with_example(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_core_commands_exist() -> None:
    names = {" ".join(p) for p in _command_paths()}
    for expected in ("catalog nih", "catalog folder", "catalog csv", "explore", "synth", "prepare", "train",
                     "compare", "evaluate", "report", "predict", "explain", "demo"):
        assert expected in names


def test_friendly_turns_library_errors_into_exit_1(capsys) -> None:
    @friendly
    def boom() -> None:
        raise DataError("labels.csv: no column 'Patient ID'")

    with pytest.raises(typer.Exit) as info:
        boom()
    assert info.value.exit_code == 1
    assert "labels.csv: no column 'Patient ID'" in capsys.readouterr().err


def test_top_level_exports_resolve() -> None:
    for name in chestxray.__all__:
        assert getattr(chestxray, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        chestxray.nope  # noqa: B018
