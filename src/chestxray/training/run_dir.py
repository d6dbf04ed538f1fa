"""Whether a run folder may be trained into, decided from the files alone (no torch): the command line asks before
loading anything heavy, and train() asks again under the folder's lock.

One rule, so that `--resume` and a plain re-run never both refuse (after a disk-full stop the first said "start it
again without --resume" and the second "continue it with --resume", and only deleting the folder helped):
- a run is *resumable* when checkpoints/last.ckpt is a complete checkpoint file: `--resume` continues it, a plain
  run is refused (it would overwrite it);
- a run is *finished* when bundle/card.json exists (written after the weights): a plain run is refused;
- anything else in a folder with config.yaml (stopped before its first checkpoint, or a disk-full or damaged
  last.ckpt) cannot be continued: `--resume` is refused, a plain run reuses the folder.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from chestxray.errors import ConfigError
from chestxray.training.config import CONFIG_FILE

LAST = Path("checkpoints") / "last.ckpt"


def last_checkpoint_problem(run_dir: Path) -> str | None:
    """None when checkpoints/last.ckpt is a complete checkpoint file, else what is wrong with it, in words. A
    checkpoint is a zip archive (torch.save) whose directory sits at its end: a truncated file has none."""
    last = run_dir / LAST
    if not last.is_file():
        return "there is no checkpoints/last.ckpt"
    if last.stat().st_size == 0 or not zipfile.is_zipfile(last):
        return (f"checkpoints/last.ckpt is damaged ({last.stat().st_size:,} bytes, not a complete checkpoint: "
                "truncated or cut short by a full disk)")
    return None


def is_finished(run_dir: Path) -> bool:
    """True when the run wrote its whole bundle: card.json, which save_bundle writes after the weights."""
    return (run_dir / "bundle" / "card.json").is_file()


def has_started(run_dir: Path) -> bool:
    """True when the folder holds a run to keep: one that can be continued or that finished."""
    return last_checkpoint_problem(run_dir) is None or is_finished(run_dir)


def refuse_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one that cannot be continued (see the module rule); reads files only."""
    run_dir = Path(run_dir)
    if resume:
        problem = last_checkpoint_problem(run_dir)
        if problem is not None:
            restart = ("start it again without --resume (the folder is reused)"
                       if not is_finished(run_dir) else
                       f"it finished (bundle/ is complete): use it as it is, or train again into another --out")
            raise ConfigError(f"cannot resume {run_dir}: {problem}, so nothing can be continued; {restart}")
    elif (run_dir / CONFIG_FILE).exists() and has_started(run_dir):
        way = (f"Either continue it with --resume {run_dir}, pick" if last_checkpoint_problem(run_dir) is None else
               "It finished (bundle/ is complete) and cannot be continued: pick")
        raise ConfigError(f"{run_dir / CONFIG_FILE} exists: {run_dir} holds an earlier run and will not be "
                          f"overwritten. {way} another --out, or delete {run_dir}")
