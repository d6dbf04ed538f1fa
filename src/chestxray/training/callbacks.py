"""Training policy as Lightning callbacks: backbone freezing, RNG state in checkpoints, the run's metric tables, and
progress that speaks in human epochs: a bar on a terminal, one plain line per epoch in a log file or a pipe."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from chestxray.files import atomic_path, write_csv
from chestxray.models import backbone_blocks, block_parameters

METRIC_COLUMNS = ["step", "epoch", "train_loss", "val_loss", "val_auroc", "lr"]
HISTORY_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_auroc", "train_accuracy", "val_accuracy", "lr",
                   "train_images", "train_seconds"]


class FreezeBackbone(Callback):
    """Freeze the backbone except its last `unfreeze_last` blocks; the head (and thawed blocks) train.

    Frozen weights get requires_grad=False: every parameter of the frozen stages, including those held directly by
    a module rather than a layer inside it (a ViT's cls_token and pos_embed, in its first stage). Every BatchNorm
    layer of the backbone — frozen or thawed — is held in eval mode before each training batch (Lightning puts the
    whole model back in train mode at each epoch and after each validation), so it normalises with its stored running
    statistics and never updates them: a frozen backbone computes exactly the features that evaluation, predict and
    explain see. In thawed blocks BatchNorm's affine weight and bias still train; only its statistics stay fixed (the
    usual fine-tuning practice with small batches, as in Keras' transfer-learning guide and torchvision's detection
    models). LayerNorm (transformers) has no statistics: freezing it is enough.
    """

    def __init__(self, model_name: str, unfreeze_last: int = 0) -> None:
        super().__init__()
        self.model_name, self.unfreeze_last = model_name, int(unfreeze_last)
        self._norms: list[torch.nn.Module] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        groups = block_parameters(pl_module.net, self.model_name)
        keep = len(groups) - min(self.unfreeze_last, len(groups))
        for param in (p for group in groups[:keep] for p in group):
            param.requires_grad = False
        blocks = backbone_blocks(pl_module.net, self.model_name)
        self._norms = [m for block in blocks for top in block for m in top.modules()
                       if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def hold_statistics(self) -> None:
        """Put the backbone's BatchNorm layers in eval mode (stored statistics, no updates)."""
        for norm in self._norms:
            norm.eval()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hold_statistics()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.hold_statistics()


class RngState(Callback):
    """Save Python/NumPy/torch RNG states in checkpoints and restore them when a resumed run starts its next epoch."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        _, python_keys, python_pos = random.getstate()
        _, numpy_keys, numpy_pos, *_ = np.random.get_state()
        state = {"python": list(python_keys), "python_pos": python_pos, "numpy": numpy_keys.tolist(),
                 "numpy_pos": int(numpy_pos), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        random.setstate((3, tuple(s["python"]), s["python_pos"]))
        np.random.set_state(("MT19937", np.asarray(s["numpy"], dtype=np.uint32), s["numpy_pos"], 0, 0.0))
        torch.set_rng_state(s["torch"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt: the latest state, at the end of every epoch (or validation, with --val-every).

    Lightning's own save_last writes it only when the best checkpoint was saved at the same step, so after an epoch
    that did not improve it would hold an older state. Where --max-steps stops training inside an epoch, it is saved
    at that batch instead, as an epoch under way (not at the epoch's end, which would count the epoch as done): a run
    extended with a larger --max-steps or --epochs then finishes that same epoch (the data module skips the batches
    already trained). Lightning runs checkpoint callbacks after the others, so the rows of that batch are in it.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, auto_insert_metric_name=False,
                         enable_version_counter=False)
        self.last = Path(dirpath) / "last.ckpt"

    @staticmethod
    def _cut_short(trainer: L.Trainer) -> bool:
        """True once --max-steps is reached before the current epoch's last batch."""
        limit = trainer.max_steps
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return limit is not None and 0 < limit <= trainer.global_step and done < trainer.num_training_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._cut_short(trainer):
            trainer.save_checkpoint(self.last)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._cut_short(trainer):
            super().on_train_epoch_end(trainer, pl_module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints through a temporary file and a rename, so a killed run never leaves a half checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


def _lr(trainer: L.Trainer) -> float:
    """The head's current learning rate (the last param group; NaN before optimizers exist)."""
    return float(trainer.optimizers[0].param_groups[-1]["lr"]) if trainer.optimizers else math.nan


class MetricsHistory(Callback):
    """Collect per-step and per-validation rows and write RUN/metrics.csv and RUN/history.csv after each validation.

    metrics.csv: step, epoch, train_loss, val_loss, val_auroc, lr (NaN where not logged); history.csv: one row per
    validation (per epoch by default) with the epoch's mean train loss and train accuracy (image-weighted over its
    batches; at 0.5 and averaged over labels for multi-label), val accuracy, and the images (this rank's share
    under DDP) and seconds spent training since the previous row.
    The rows are part of the checkpoint, so a resumed run continues the same tables.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, float]] = []
        self.history: list[dict[str, float]] = []
        self._epoch_losses: list[float] = []
        self._epoch_correct = 0.0  # sum over batches of accuracy x images
        self._epoch_images = 0
        self._epoch_start = 0.0
        self._val_seconds = 0.0
        self._val_start = 0.0
        self.train_images = 0
        self.train_seconds = 0.0
        self._batches_epoch = 0  # the epoch of the batches counted so far
        self._resumed_epoch: int | None = None  # set when a checkpoint taken mid-epoch is loaded
        self._resumed_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        # "partial": the epoch under way (a checkpoint taken mid-epoch, e.g. at a --max-steps stop), so a resumed run
        # closes that epoch with all of its batches and the history gets one row for it, not two halves
        partial = {"epoch": self._batches_epoch, "losses": list(self._epoch_losses), "images": self._epoch_images,
                   "correct": self._epoch_correct,
                   "seconds": time.perf_counter() - self._epoch_start - self._val_seconds if self._epoch_images else 0.0}
        return {"rows": self.rows, "history": self.history, "train_images": self.train_images,
                "train_seconds": self.train_seconds, "partial": partial}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows, self.history = list(state_dict["rows"]), list(state_dict["history"])
        self.train_images, self.train_seconds = int(state_dict["train_images"]), float(state_dict["train_seconds"])
        partial = state_dict.get("partial") or {}
        if partial.get("images"):  # Lightning goes on inside that epoch without calling on_train_epoch_start
            self._epoch_losses, self._epoch_images = list(partial["losses"]), int(partial["images"])
            self._epoch_correct, self._resumed_seconds = float(partial["correct"]), float(partial["seconds"])
            self._resumed_epoch = int(partial["epoch"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._val_seconds = time.perf_counter() - self._resumed_seconds, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self._resumed_epoch:  # continuing the epoch a mid-epoch checkpoint left open
            self._resumed_epoch = None
            return
        self._resumed_epoch = None
        self._epoch_losses, self._epoch_images, self._epoch_correct = [], 0, 0.0
        self._epoch_start, self._val_seconds = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
        n = len(batch["labels"])
        self._epoch_losses.append(loss)
        if isinstance(outputs, dict) and "accuracy" in outputs:
            self._epoch_correct += float(outputs["accuracy"]) * n
        self._epoch_images += n
        self._batches_epoch = trainer.current_epoch
        self.rows.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "train_loss": loss,
                          "val_loss": math.nan, "val_auroc": math.nan, "lr": _lr(trainer)})

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_seconds += time.perf_counter() - self._val_start
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        val_loss, val_auroc = _value(metrics, "val_loss"), _value(metrics, "val_auroc")
        lr = _lr(trainer)
        self.rows.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "train_loss": math.nan,
                          "val_loss": val_loss, "val_auroc": val_auroc, "lr": lr})
        self._close_epoch(trainer, val_loss, val_auroc, lr)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_images:  # no validation closed this epoch's share
            self._close_epoch(trainer, math.nan, math.nan, _lr(trainer))

    def _close_epoch(self, trainer: L.Trainer, val_loss: float, val_auroc: float, lr: float) -> None:
        seconds = time.perf_counter() - self._epoch_start - self._val_seconds
        self.train_images += self._epoch_images
        self.train_seconds += seconds
        train_loss = float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan
        train_acc = self._epoch_correct / self._epoch_images if self._epoch_images else math.nan
        val_acc = _value(trainer.callback_metrics, "val_accuracy") if not math.isnan(val_loss) else math.nan
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "train_loss": train_loss,
                             "val_loss": val_loss, "val_auroc": val_auroc, "train_accuracy": train_acc,
                             "val_accuracy": val_acc, "lr": lr,
                             "train_images": self._epoch_images, "train_seconds": seconds})
        self._epoch_losses, self._epoch_images, self._epoch_correct = [], 0, 0.0
        self._epoch_start, self._val_seconds = time.perf_counter(), 0.0
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        """Write metrics.csv and history.csv into the run folder (atomically)."""
        write_csv(self.run_dir / "metrics.csv", pd.DataFrame(self.rows, columns=METRIC_COLUMNS))
        write_csv(self.run_dir / "history.csv", pd.DataFrame(self.history, columns=HISTORY_COLUMNS))


class EpochProgressBar(RichProgressBar):
    """Lightning's rich bar, counting epochs from 1 ("Epoch 1/2", not "Epoch 0/1"), without Lightning's logger
    version (v_num) and without validation metrics until a real validation has run (the sanity check's 0.500
    AUROC on one batch is not a result)."""

    def __init__(self) -> None:
        super().__init__()
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._validated = self._validated or not trainer.sanity_checking

    def _get_train_description(self, current_epoch: int) -> str:
        total = self.trainer.max_epochs
        text = f"Epoch {current_epoch + 1}" + (f"/{total}" if total is not None and total > 0 else "")
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if not self._validated:
            items = {k: v for k, v in items.items() if not k.startswith("val_")}
        return items


def _duration(seconds: float) -> str:
    """'42 s', '4 min 13 s', '2 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class EpochLines(Callback):
    """Progress for a log file, a pipe or a batch job (stdout not a terminal): one plain line per validation (per
    epoch by default) with the epoch's metrics, the time so far and an estimate of the time left, written and
    flushed at once — where a progress bar would leave nothing until the end, then one frame."""

    def __init__(self, history: MetricsHistory, label: str = "", write: Any = None) -> None:
        self.history, self.label = history, label
        self.write = write or (lambda line: print(line, flush=True))
        self._start, self._start_step, self._shown = 0.0, 0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._start_step, self._shown = time.perf_counter(), trainer.global_step, len(self.history.history)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._show(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._show(trainer)

    def _show(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self.history.history) <= self._shown:
            return
        self._shown = len(self.history.history)
        row = self.history.history[-1]
        elapsed = time.perf_counter() - self._start
        done, total = trainer.global_step - self._start_step, trainer.estimated_stepping_batches
        left = total - trainer.global_step if math.isfinite(total) else math.nan
        eta = _duration(elapsed / done * left) if done > 0 and left == left else "unknown"
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        metrics = ", ".join(f"{name} {row[name]:.4f}" for name in ("train_loss", "val_loss", "val_auroc")
                            if not math.isnan(row[name]))
        prefix = f"{self.label}: " if self.label else ""
        self.write(f"{prefix}epoch {int(row['epoch']) + 1}{epochs}, step {trainer.global_step}: {metrics} "
                   f"({_duration(elapsed)} so far, about {eta} left)")
