"""Resuming and extending a run folder: what its last checkpoint says was trained, whether new limits leave anything
to train, the warm-up an extended schedule keeps, and which checkpoint files stay once the bundle is written.

Extending a run (`--resume RUN --epochs N` or `--max-steps M`, larger than what was trained): training goes on from
checkpoints/last.ckpt; the warm-up + cosine schedule is re-planned for the new total T (epochs × steps per epoch,
capped by --max-steps) while keeping the warm-up length W the run started with, and the LR continues from the value
that re-planned curve has at the step already done S: lr × ½(1 + cos(π (S − W) / (T − W))). It neither restarts
at 0 nor goes back into warm-up. ReduceLROnPlateau just continues.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chestxray.errors import ConfigError
from chestxray.training.config import TrainConfig
from chestxray.training.run_dir import is_finished


@dataclass(frozen=True)
class Progress:
    """What a checkpoint holds: whole epochs trained, optimizer steps, and the schedule's warm-up length."""

    epochs: int  # epochs trained to their end (a mid-epoch checkpoint's epoch is not counted)
    step: int
    warmup_steps: int | None  # None: not recorded (a checkpoint without the module's hyper-parameters)


def _load(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's contents without unpickling; a damaged file is a one-line ConfigError with the way out."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        text = " ".join(str(exc).split())[:160]
        raise ConfigError(f"{checkpoint}: cannot read the checkpoint ({text}); it is damaged: start the run again "
                          "without --resume (the folder is reused), or restore the file from a backup") from None


def read_progress(checkpoint: Path) -> Progress:
    """The Progress stored in a Lightning checkpoint (loaded without unpickling)."""
    ckpt = _load(checkpoint)
    epochs = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    hparams = ckpt.get("hyper_parameters") or {}
    warmup = hparams.get("warmup_steps")
    if warmup is None and "total_steps" in hparams:
        warmup = int(float(hparams.get("warmup_fraction", 0.0)) * max(1, int(hparams["total_steps"])))
    return Progress(epochs=int(epochs if epochs is not None else ckpt.get("epoch", 0) + 1),
                    step=int(ckpt.get("global_step", 0)), warmup_steps=None if warmup is None else int(warmup))


def check_extendable(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to resume a finished run (bundle/ written) whose limits are already reached: it would train nothing.
    The message says what was trained and which larger --epochs/--max-steps continue it."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not is_finished(run_dir) or not last.is_file():  # a bundle cut short (a full disk) is written by resuming
        return
    done = read_progress(last)
    steps_left = config.max_steps < 0 or done.step < config.max_steps
    if done.epochs < config.epochs and steps_left:
        return
    reached = [f"--epochs {config.epochs}"] if done.epochs >= config.epochs else []
    reached += [] if steps_left else [f"--max-steps {config.max_steps}"]
    need = ([f"--epochs {done.epochs + 1} or more"] if done.epochs >= config.epochs else [])
    need += [] if steps_left else [f"--max-steps {done.step + 1} or more (-1: no limit)"]
    raise ConfigError(f"cannot resume {run_dir}: it already finished ({' and '.join(reached)} reached after "
                      f"{done.epochs} whole epoch(s), step {done.step}; bundle/ written), so there is nothing to "
                      f"train. To train further: chestxray train --resume {run_dir} {' and '.join(need)}; to use it "
                      f"as it is: chestxray evaluate {run_dir}")


def keep_only_last(last: Path, best: Path | None) -> str:
    """After training, once the bundle holds the best weights: keep checkpoints/last.ckpt (needed to resume or extend
    the run) and drop best.ckpt, unless it is the same step as last, when last becomes a hard link to it (both names,
    one file). Returns what it did: 'linked', 'removed' or 'kept' (nothing to do, or no hard links here)."""
    if best is None or not best.is_file() or not last.is_file():
        return "kept"
    if os.path.samefile(last, best):
        return "linked"
    if _load(last).get("global_step") != _load(best).get("global_step"):
        best.unlink()
        return "removed"
    tmp = last.with_name(last.name + ".link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(best, tmp)
    except OSError:  # a filesystem without hard links: the copies are equal, keep the one resuming needs
        best.unlink()
        return "removed"
    os.replace(tmp, last)
    return "linked"
