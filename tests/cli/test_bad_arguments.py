"""Issue 22, bad arguments the library itself refuses (the command line refuses them earlier, before torch loads:
tests/cli/test_usage_checks.py): NaN settings, zero bootstrap replicates, an output folder that is a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chestxray.errors import ConfigError
from chestxray.evaluation.metrics import summarize
from chestxray.locks import folder_lock
from chestxray.training.config import resolve_config


@pytest.mark.parametrize("setting", [{"weight_decay": float("nan")}, {"lr": float("nan")},
                                     {"max_minutes": float("inf")}, {"dropout": float("nan")}])
def test_non_finite_settings_are_refused(tmp_path: Path, setting: dict) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="must be a finite number"):
        resolve_config(prepared=str(tmp_path), model="cnn-tiny", **setting)


def test_zero_bootstrap_replicates_are_refused() -> None:
    y = np.array([[0], [1], [0], [1]])
    with pytest.raises(ConfigError, match=r"--n-boot 0: the bootstrap needs at least 1 replicate"):
        summarize(y, y * 0.8 + 0.1, ["a"], ["p1", "p2", "p3", "p4"], n_boot=0)


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    for folder in (tmp_path / "taken", tmp_path / "taken" / "below"):
        with pytest.raises(ConfigError, match=rf"{folder}: cannot be an output folder, {tmp_path / 'taken'} is a "
                                              "file; pick another folder"):
            with folder_lock(folder, "prepare"):
                pass


@pytest.mark.parametrize("where", ["finding", "label"])
def test_a_huge_table_cell_is_quoted_briefly(tmp_path: Path, where: str) -> None:
    """A 50 MB cell used to become a 50 MB error line; 5 MB shows the same (the message quotes 60 characters)."""
    from typer.testing import CliRunner

    from chestxray.cli import app
    from tests.data import probes

    probes.png(tmp_path / "a.png")
    probes.png(tmp_path / "b.png", seed=1)
    big = "X" * 5_000_000
    cells = (big, "0") if where == "finding" else ("Mass", big)
    (tmp_path / "t.csv").write_text(f"path,patient,finding,lab\na.png,1,{cells[0]},{cells[1]}\nb.png,2,Mass,1\n")
    flag = ["--findings-col", "finding"] if where == "finding" else ["--label-cols", "lab"]
    result = CliRunner().invoke(app, ["catalog", "csv", str(tmp_path / "t.csv"), "--path-col", "path",
                                      "--patient-col", "patient", *flag, "--out", str(tmp_path / "cat")])
    line = probes.one_line_error(result, "5,000,000 characters")
    assert len(result.output) < 1000 and len(line) < 400


def test_the_command_line_bounds_any_message() -> None:
    from chestxray.cli.common import MAX_MESSAGE, _bounded

    text = "a" * 10_000 + "\n" + "b" * 10_000
    shown = _bounded(text)
    assert len(shown) < MAX_MESSAGE + 100 and "\n" not in shown and "characters left out" in shown
    assert shown.startswith("a") and shown.endswith("b") and _bounded("short") == "short"
