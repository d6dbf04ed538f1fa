"""Output that works in a pipe, a log file and at 80 columns, and help texts that agree (issue 23): one plain line per
epoch when stdout is not a terminal, no third-party notices the user cannot act on, tables that never cut a name,
commands listed in pipeline order, and refusals / hints that say what to do."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from chestxray.cli import ORDER, app
from chestxray.cli.common import print_table

NOTICES = ("CloudPickle", "Type hint", "type hints", "Failed to infer signature", "Checkpoint directory",
           "logging interval", "\x1b[")


def _chestxray(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a fresh process, stdout and stderr to pipes (as under nohup, SLURM or `> log`)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "MLFLOW_TRACKING_URI": ""}
    return subprocess.run([sys.executable, "-m", "chestxray", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_train_in_a_pipe_prints_one_plain_line_per_epoch_and_no_notices(synthetic_prepared: Path,
                                                                        tmp_path: Path) -> None:
    common = ["--batch-size", "64", "--num-workers", "0", "--lr", "3e-3"]
    first = _chestxray("train", str(synthetic_prepared), "--model", "cnn-tiny", "--epochs", "2", *common,
                       "--out", "runs/piped", cwd=tmp_path)  # MLflow on: the store beside the run folder
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stdout.splitlines()
    epochs = [line for line in lines if re.match(r"piped: epoch \d/2, step \d+: ", line)]
    assert len(epochs) == 2 and epochs[0].startswith("piped: epoch 1/2") and epochs[1].startswith("piped: epoch 2/2")
    for line in epochs:
        assert re.search(r"train_loss \d\.\d{4}, val_loss \d\.\d{4}, val_auroc \d\.\d{4} \(\d+ s so far, about "
                         r"(\d+ s|\d+ min \d\d s) left\)$", line), line
    assert lines[-1].startswith("trained cnn-tiny: best val AUROC") and len(lines) == 3
    assert "\r" not in first.stdout and "━" not in first.stdout  # no progress-bar frames
    assert not [n for n in NOTICES if n in first.stderr], first.stderr[-2000:]
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # MLflow really ran (its notices were the ones to hide)

    more = _chestxray("train", "--resume", "runs/piped", "--epochs", "3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert [line[:17] for line in more.stdout.splitlines()][:1] == ["piped: epoch 3/3,"]
    assert not [n for n in NOTICES if n in more.stderr], more.stderr[-2000:]


def _console(width: int = 80) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width), buffer  # a file, not a terminal: as in a pipe or a log


def test_tables_never_cut_names_at_80_columns_or_in_a_pipe() -> None:
    groups = ["recipe=scratch,model=cnn-small,lr=0.002", "recipe=finetune,model=efficientnet-lite0,lr=0.001"]
    table = Table(title="study: 6 runs")
    for column in ("group", "val AUROC mean ± sd", "test AUROC mean ± sd", "selected (rule)", "its test AUROC"):
        table.add_column(column, no_wrap=True)
    for group in groups:
        table.add_row(group, "0.992 ± 0.002", "0.972 ± 0.003", f"{group.split(',')[0]}_seed1 (val_auroc)",
                      "0.971 [0.949, 0.988]")
    console, buffer = _console()
    print_table(table, console)
    text = buffer.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    for group in groups:  # too wide for a table at 80 columns: one block per row, every name and figure whole
        assert f"group: {group}" in text
    assert text.count("its test AUROC: 0.971 [0.949, 0.988]") == 2

    small = Table(title="fits")
    small.add_column("finding")
    small.add_column("AUROC")
    small.add_row("Pleural_Thickening", "0.812")
    console, buffer = _console()
    print_table(small, console)
    assert "┃ finding" in buffer.getvalue() and "Pleural_Thickening" in buffer.getvalue()  # a table when it fits


def _help(*argv: str) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_help_lists_commands_in_pipeline_order_and_texts_agree() -> None:
    raw = CliRunner().invoke(app, ["--help"], terminal_width=80).output
    assert re.findall(r"^│ ([a-z][a-z-]+) ", raw, flags=re.M) == ORDER, "commands listed in pipeline order"
    top = _help()
    assert top.index("Start here") < top.index("The chain, in order") < top.index("Compare and search")
    assert "pip install 'chestxray[ui]'" in _help("ui")  # as the README says (the brackets were eaten as markup)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[ui]'" in readme
    train = _help("train")
    assert "browse it with 'chestxray ui'" in train and "backend-store-uri" not in train
    assert "chestxray ui" in _help("tune") and "file:./mlruns" not in _help("tune")
    study = _help("study")
    assert all(flag in study for flag in ("--epochs", "--batch-size", "--lr", "--config", "compare-runs"))
    assert "chestxray study" in _help("compare") and "chestxray study" in _help("compare-runs")


def test_every_bracket_in_a_help_text_survives_rendering() -> None:
    """Help texts are rich markup: '[ui]' vanished from 'chestxray[ui]'; every [..] written must be shown."""
    from typer.main import get_group

    group = get_group(app)
    for name in ORDER:
        command = group.commands[name]
        subcommands = getattr(command, "commands", {}) or {"": command}
        for sub, cmd in subcommands.items():
            raw = " ".join(p for p in [cmd.help or ""] + [getattr(o, "help", "") or "" for o in cmd.params] if p)
            wanted = [b.replace("\\", "") for b in re.findall(r"\\?\[[^\]\s]*\]", raw)]
            shown = _help(*[a for a in (name, sub) if a]).replace(" ", "")
            for bracket in wanted:
                assert bracket in shown, f"chestxray {name} {sub} --help lost {bracket!r}"


def test_study_takes_the_common_train_settings_as_flags(synthetic_prepared: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["study", str(synthetic_prepared), "--out", str(tmp_path / "s"), "--models",
                                      "cnn-tiny", "--epochs", "1,2", "--lr", "3e-3", "--batch-size", "16", "--list",
                                      "--no-mlflow"])
    assert result.exit_code == 0, result.output
    runs = [line.split() for line in result.output.splitlines() if line.strip()]
    assert [r[-1] for r in runs] == ["epochs=1", "epochs=2"]
    twice = CliRunner().invoke(app, ["study", str(synthetic_prepared), "--out", str(tmp_path / "s"), "--epochs", "1",
                                     "--set", "epochs=2", "--list"])
    assert twice.exit_code == 1 and "epochs is given twice" in twice.output


def test_predict_before_evaluate_says_why_there_are_no_decisions(tmp_path: Path, shared_data: Path) -> None:
    import torch

    from chestxray.data.labels import NIH14
    from chestxray.models import build_model
    from chestxray.models.bundle import save_bundle

    torch.manual_seed(0)
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.yaml").write_text("model: cnn-tiny\n")
    save_bundle(run / "bundle", build_model("cnn-tiny", num_labels=14), {
        "architecture": "cnn-tiny", "num_labels": 14, "in_chans": 1, "image_size": 32, "resize": "pad",
        "normalization": "gray", "labels": list(NIH14), "task": "multilabel"})
    image = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[0]
    result = CliRunner().invoke(app, ["predict", str(run), str(image)], terminal_width=80)
    assert result.exit_code == 0, result.output
    last = " ".join(result.output.split()).rsplit("1 image(s) scored", 1)[1]
    assert "no positive/negative decisions: the model has no thresholds yet" in last
    assert f"'chestxray evaluate {run}' chooses them on the validation split" in last


@pytest.mark.parametrize("argv", [["train", "--resume", "RUN", "--progress", "false"], ["train", "no"]])
def test_a_switch_given_a_value_is_not_read_as_prepared(argv: list[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(f"prepared: {tmp_path}\nmodel: cnn-tiny\nout: {run}\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    result = CliRunner().invoke(app, [str(run) if a == "RUN" else a for a in argv])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "is not a folder: switches such as --progress and --mlflow take no value" in text
    assert "--no-progress" in text
