"""Whether a run folder may be trained into, decided from the files alone (no torch): the command line asks before
loading anything heavy, and train() asks again under the folder's lock."""

from __future__ import annotations

from pathlib import Path

from chestxray.errors import ConfigError
from chestxray.training.config import CONFIG_FILE

STARTED = ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "bundle")  # a run that got this far is kept


def has_started(run_dir: Path) -> bool:
    """True when the run wrote a checkpoint or a bundle (a folder with only config.yaml failed before that)."""
    return any((run_dir / name).exists() for name in STARTED)


def refuse_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one that has no checkpoint; reads files only."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError(f"cannot resume {run_dir}: no checkpoints/last.ckpt (the run stopped before its "
                              "first checkpoint); start it again without --resume (the folder is reused)")
    elif (run_dir / CONFIG_FILE).exists() and has_started(run_dir):
        raise ConfigError(f"{run_dir / CONFIG_FILE} exists: {run_dir} holds an earlier run and will not be "
                          f"overwritten. Either continue it with --resume {run_dir}, pick another --out, or delete "
                          f"{run_dir}")
