"""Issue 22, a full disk and damaged checkpoints in training and evaluation: one line saying which folder is full and
what was kept; `--resume` and a plain re-run never both refuse; `--resume` works from another working folder.

A full disk is simulated by making the writer raise OSError(ENOSPC) at the chosen point (a tiny tmpfs needs root
mounts; the product sees the same exception either way)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typer.testing import CliRunner

import chestxray.evaluation.evaluate as evaluate_module
import chestxray.models.bundle as bundle_module
from chestxray.cli import app
from chestxray.data.prepare import prepare_dataset
from chestxray.data.sources import read_folder
from chestxray.data.split import assign_splits
from tests.data import probes

FAST = ["--model", "cnn-tiny", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress",
        "--no-mlflow", "--precision", "32-true"]


def _cli(*argv: object):
    return CliRunner().invoke(app, [str(a) for a in argv], terminal_width=400)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("disk-full")
    catalog = assign_splits(read_folder(probes.class_folders(root / "src", {"NORMAL": 12, "PNEUMONIA": 12})),
                            ratios=(0.5, 0.25, 0.25))
    prepare_dataset(catalog, root / "prepared", size=16, workers=0)
    return root / "prepared"


def _full_at(monkeypatch, name: str, times: int = 1) -> list[str]:
    """Make checkpoint writes of `name` fail with ENOSPC (inside the atomic writer, as a real write() would)."""
    real, failed = TorchCheckpointIO.save_checkpoint, []

    def save(self, checkpoint, path, storage_options=None):
        if Path(path).name.startswith(f".{name}.") and len(failed) < times:
            failed.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", save)
    return failed


def test_disk_full_before_the_first_last_checkpoint_then_a_plain_rerun_goes_on(prepared: Path, tmp_path: Path,
                                                                               monkeypatch) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        failed = _full_at(patch, "last.ckpt")
        line = probes.one_line_error(_cli("train", prepared, *FAST, "--out", run),
                                     rf"{run}: no space left on the device while writing {run}/checkpoints/last.ckpt")
    assert failed and "nothing to continue from (there is no checkpoints/last.ckpt)" in line
    assert "run the same command again (the folder is reused)" in line
    assert (run / "checkpoints" / "best.ckpt").is_file()  # the state that used to dead-end both commands
    probes.one_line_error(_cli("train", "--resume", run), r"cannot resume .*start it again without --resume")
    result = _cli("train", prepared, *FAST, "--out", run)  # before: "continue it with --resume" (which refused)
    assert result.exit_code == 0 and (run / "bundle" / "card.json").is_file(), result.output


def test_disk_full_writing_the_bundle_then_resume_writes_it(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    real = bundle_module.write_json

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(bundle_module, "write_json", full)
        line = probes.one_line_error(_cli("train", prepared, *FAST, "--out", run), "no space left on the device")
    assert "kept checkpoints/last.ckpt (1 whole epoch(s), step" in line and "bundle/ is not written yet" in line
    assert f"continue with: chestxray train --resume {run}" in line and bundle_module.write_json is real
    probes.one_line_error(_cli("train", prepared, *FAST, "--out", run), r"Either continue it with --resume")
    result = _cli("train", "--resume", run)  # nothing left to train: the bundle is written from the best checkpoint
    assert result.exit_code == 0 and json.loads((run / "bundle" / "card.json").read_text())["labels"] == ["PNEUMONIA"]


def test_truncated_last_checkpoint_is_one_line_and_a_plain_rerun_goes_on(prepared: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(bundle_module, "write_json", lambda path, data: (_ for _ in ()).throw(
            OSError(errno.ENOSPC, "No space left on device", str(path))))
        probes.one_line_error(_cli("train", prepared, *FAST, "--out", run), "no space left on the device")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    probes.one_line_error(_cli("train", "--resume", run, "--epochs", "2"),
                          r"cannot resume .*: checkpoints/last.ckpt is damaged \([\d,]+ bytes, not a complete "
                          r"checkpoint: truncated or cut short by a full disk\), so nothing can be continued; start "
                          r"it again without --resume")
    result = _cli("train", prepared, *FAST, "--out", run)
    assert result.exit_code == 0, result.output
    last.write_bytes(b"")  # a finished run with a damaged checkpoint: both refuse, and both say why
    probes.one_line_error(_cli("train", "--resume", run, "--epochs", "2"), r"it finished \(bundle/ is complete\)")
    probes.one_line_error(_cli("train", prepared, *FAST, "--out", run), r"It finished \(bundle/ is complete\)")


def test_resume_from_another_working_folder(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    first, other = tmp_path / "here", tmp_path / "elsewhere"
    first.mkdir()
    other.mkdir()
    (first / "data").symlink_to(prepared)
    monkeypatch.chdir(first)
    result = _cli("train", "data", *FAST, "--max-steps", "1", "--out", "run")  # PREPARED given relative
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((first / "run" / "config.yaml").read_text())
    assert config["prepared"] == str(prepared.resolve())  # before: 'data', valid only from the first folder
    monkeypatch.chdir(other)
    result = _cli("train", "--resume", first / "run", "--max-steps", "2")
    assert result.exit_code == 0, result.output


def test_disk_full_in_evaluate_changes_nothing(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    assert _cli("train", prepared, *FAST, "--out", run).exit_code == 0
    card = (run / "bundle" / "card.json").read_bytes()

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(evaluate_module, "write_csv", full)
        line = probes.one_line_error(_cli("evaluate", run, "--n-boot", "10"), rf"{run}: no space left on the device")
    assert f"nothing was changed: the card's thresholds and {run / 'eval'} are as before" in line
    assert (run / "bundle" / "card.json").read_bytes() == card and not (run / "eval").exists()
    assert not list(run.glob(".eval.*"))  # no temporary folder left behind
