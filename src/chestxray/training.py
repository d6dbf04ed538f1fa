"""Training: the LightningModule (loss, AdamW, warm-up + cosine, val AUROC) and train(), which assembles the Trainer.

A run folder RUN/ holds config.yaml (the resolved TrainConfig), run.json (labels, fingerprint, MLflow run id),
checkpoints/{best,last}.ckpt, metrics.csv, history.csv, logs/ (Lightning CSVLogger) and bundle/ (the best model).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAUROC, MultilabelAUROC

from chestxray.callbacks import AtomicCheckpointIO, FreezeBackbone, MetricsHistory, RngState
from chestxray.config import TrainConfig, config_yaml, validate_config
from chestxray.errors import ConfigError
from chestxray.files import write_json, write_text

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
               pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean sigmoid focal loss: BCE (optionally pos-weighted) scaled by (1 - p_t)^gamma (Lin et al. 2017)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    probs = torch.sigmoid(logits)
    p_t = probs * targets + (1 - probs) * (1 - targets)
    return (bce * (1 - p_t).pow(gamma)).mean()


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class LabelCounts(Metric):
    """Positives per label and number of samples seen (summed across ranks)."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.add_state("positives", default=torch.zeros(num_labels), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, labels: torch.Tensor) -> None:
        self.positives += labels.sum(0).to(self.positives.dtype)
        self.count += labels.shape[0]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.positives, self.count


class ChestXrayModule(L.LightningModule):
    """Multi-label classifier around a built net: BCE-with-logits (or focal) loss, AdamW, val mean AUROC.

    total_steps sets the cosine schedule's length (train() computes it from the data plan, so the train loader is
    never built before a resumed run has restored its epoch). val_auroc is the mean over labels that have both
    classes in the validation set (others are left out, so a label without positives never gives NaN);
    torchmetrics gathers predictions from every rank.
    """

    def __init__(self, net: nn.Module, labels: list[str], lr: float = 1e-4, weight_decay: float = 1e-4,
                 loss: str = "bce", focal_gamma: float = 2.0, pos_weight: list[float] | None = None,
                 scheduler: str = "cosine", warmup_fraction: float = 0.05, monitor: str = "val_auroc",
                 patience: int = 5, channels_last: bool = False, total_steps: int = 1000) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)  # loggers get the TrainConfig instead
        self.net = net
        self.labels = list(labels)
        self.register_buffer("pos_weight", torch.tensor(pos_weight, dtype=torch.float32) if pos_weight else None)
        n = len(self.labels)
        self.val_auroc = MultilabelAUROC(num_labels=n, average="none") if n > 1 else BinaryAUROC()
        self.val_counts = LabelCounts(n)
        self.val_loss = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float → logits (B, L)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.hparams.loss == "focal":
            return focal_loss(logits, labels, self.hparams.focal_gamma, self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.pos_weight)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(self(batch["image"]), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        logits = self(batch["image"]).float()
        probs = torch.sigmoid(logits)
        self.val_loss.update(self.compute_loss(logits, labels), weight=len(labels))
        if isinstance(self.val_auroc, BinaryAUROC):
            self.val_auroc.update(probs[:, 0], labels[:, 0].long())
        else:
            self.val_auroc.update(probs, labels.long())
        self.val_counts.update(labels)
        return {"probs": probs.detach(), "labels": labels}

    def on_validation_epoch_end(self) -> None:
        per_label = self.val_auroc.compute().reshape(-1)
        positives, count = self.val_counts.compute()
        usable = ((positives > 0) & (positives < count)).reshape(-1)  # torchmetrics squeezes one label to 0-d
        if bool(usable.any()):
            auroc = per_label[usable].mean()
        else:
            if not (self._trainer is not None and self.trainer.sanity_checking):  # sanity check: a batch or two
                log.warning("no label has both positives and negatives in the validation data; val_auroc set to 0.5")
            auroc = torch.tensor(0.5, device=per_label.device)
        self.log("val_auroc", auroc, prog_bar=True)
        self.log("val_loss", self.val_loss.compute())
        for name, value, ok in zip(self.labels, per_label.tolist(), usable.tolist(), strict=True):
            if ok:
                self.log(f"val_auroc_{name}", value)
        for metric in (self.val_auroc, self.val_counts, self.val_loss):
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "plateau":
            mode = "max" if self.hparams.monitor == "val_auroc" else "min"
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5,
                                                                 patience=max(1, self.hparams.patience // 2))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": self.hparams.monitor,
                                                             "interval": "epoch", "strict": False}}
        total = max(1, int(self.hparams.total_steps))
        warmup = int(self.hparams.warmup_fraction * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclass
class TrainResult:
    """Where a run went and how it did."""

    run_dir: Path
    bundle_dir: Path | None
    best_val_auroc: float
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs: int
    steps: int
    seconds: float
    train_images: int
    images_per_s: float  # training images per second over all ranks, validation time excluded
    parameters: int
    config: TrainConfig


def auto_precision(config: TrainConfig) -> str:
    """bf16-mixed on a GPU that supports it, else 16-mixed on GPU, 32-true on CPU (unless set explicitly)."""
    if config.precision != "auto":
        return config.precision
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def default_run_dir(config: TrainConfig) -> Path:
    """runs/<model>-<UTC timestamp> under the current folder."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{stamp}"


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    config_path = run_dir / CONFIG_FILE
    if resume:
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError(f"cannot resume {run_dir}: no checkpoints/last.ckpt (the run stopped before its "
                              "first checkpoint); start it again with another --out or delete the folder")
    elif config_path.exists():
        raise ConfigError(f"{config_path} exists: {run_dir} holds an earlier run and will not be overwritten. "
                          f"Either continue it with --resume {run_dir}, pick another --out, or delete {run_dir}")


def _tracking_uri(config: TrainConfig) -> str:
    """The tracking URI a run uses: config.mlflow_uri, else the folder store file:<cwd>/mlruns."""
    return config.mlflow_uri or f"file:{Path.cwd() / 'mlruns'}"


@contextlib.contextmanager
def _allow_file_store(uri: str) -> Iterator[None]:
    """While the block runs, let MLflow 3 open a file: store (it refuses unless MLFLOW_ALLOW_FILE_STORE is set).

    MLflow builds a new store object for every call, so the opt-in must last for the whole run; afterwards the
    environment is as it was. An explicit MLFLOW_ALLOW_FILE_STORE set by the user is left alone.
    """
    if not uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _mlflow_logger(config: TrainConfig, run_dir: Path, run_id: str | None):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = _tracking_uri(config)
    artifacts = None
    if uri.startswith("sqlite:///"):  # MLflow would put artifacts under ./mlruns of the working folder
        artifacts = (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
    return MLFlowLogger(experiment_name=config.experiment, run_name=run_dir.name, tracking_uri=uri, run_id=run_id,
                        artifact_location=artifacts,
                        tags={"run_dir": str(run_dir.resolve()), "model": config.model})


def _best_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}


def _steps_per_epoch(data: Any, world_size: int) -> int:
    """Optimizer steps per epoch on each rank, from the data module's epoch plan (no loader is built)."""
    from chestxray.data import plan_epoch

    counts = [int(c) for c in data.manifest["splits"]["train"]["shard_counts"]]
    return len(plan_epoch(counts, data.batch_size, world_size=world_size, rank=0, shuffle=True).batch_sizes)


def _data_fields(config: TrainConfig, data: Any, data_cfg: dict[str, Any]) -> dict[str, Any]:
    """What the run was trained on and how inputs are fed: shared by RUN/run.json and the bundle card."""
    return {"labels": list(data.labels), "task": data.task, "prepared": str(Path(config.prepared).resolve()),
            "data_fingerprint": data.manifest.get("fingerprint"), "image_size": data.image_size,
            "resize": data.manifest.get("resize", "pad"), "in_chans": config.in_chans,
            "normalization": data_cfg["normalization"]}


def _write_run_start(config: TrainConfig, run_dir: Path, fields: dict[str, Any], run_info: dict[str, Any],
                     mlflow_logger: Any) -> None:
    """Rank zero, before training: RUN/config.yaml, RUN/run.json and the same config as MLflow params/artifact."""
    write_text(run_dir / CONFIG_FILE, config_yaml(config))
    run_info.update(fields)
    if mlflow_logger is not None:
        mlflow_logger.log_hyperparams(config.to_dict())
        run_info["mlflow_run_id"] = mlflow_logger.run_id
        mlflow_logger.experiment.log_artifact(mlflow_logger.run_id, str(run_dir / CONFIG_FILE))
    write_json(run_dir / RUN_FILE, run_info)


def _write_run_end(config: TrainConfig, run_dir: Path, net: nn.Module, fields: dict[str, Any],
                   state_source: Path | None, best_val: float, mlflow_logger: Any) -> Path:
    """Rank zero, after training: RUN/bundle from the best checkpoint, and the run's files as MLflow artifacts."""
    from chestxray.bundle import save_bundle

    if state_source is not None:
        net.load_state_dict(_best_state(state_source))
    card = {"architecture": config.model, "num_labels": len(fields["labels"]), **fields,
            "thresholds": None, "threshold_method": None, "seed": config.seed,
            "metrics": {"val_auroc": best_val}, "run": str(run_dir.resolve()),
            "checkpoint": str(state_source) if state_source else None}
    bundle_dir = save_bundle(run_dir / "bundle", net.cpu(), card)
    if mlflow_logger is not None:
        client, run_id = mlflow_logger.experiment, mlflow_logger.run_id
        if math.isfinite(best_val):
            client.log_metric(run_id, "best_val_auroc", best_val)
        for name in ("metrics.csv", "history.csv", CONFIG_FILE):
            client.log_artifact(run_id, str(run_dir / name))
        client.log_artifacts(run_id, str(bundle_dir), "bundle")
    return bundle_dir


def train(config: TrainConfig, resume: bool = False, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train config.model on config.prepared into a run folder (config.out); resume=True continues from last.ckpt.

    Writes RUN/config.yaml before training, then checkpoints, metrics.csv, history.csv and RUN/bundle (from the
    best checkpoint). Extra Lightning callbacks may be passed (e.g. for inspection in tests). Runs on every rank
    under DDP (torchrun / SLURM / Lightning's launcher); files are written by rank zero only.
    """
    validate_config(config)
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    config = replace(config, out=str(run_dir))
    if rank_zero_only.rank == 0:  # ranks started later by Lightning's launcher find rank zero's config.yaml
        _check_run_dir(run_dir, resume)
    with _allow_file_store(_tracking_uri(config) if config.mlflow else ""):
        return _fit(config, run_dir, resume, callbacks)


def _fit(config: TrainConfig, run_dir: Path, resume: bool, callbacks: list[Callback] | None) -> TrainResult:
    """train()'s work once the config is checked: build data, model and Trainer, fit, write the bundle."""
    from lightning.pytorch.loggers import CSVLogger

    from chestxray.data import ChestXrayDataModule
    from chestxray.models import build_model, count_parameters, model_data_config

    L.seed_everything(config.seed, workers=True, verbose=False)
    data_cfg = model_data_config(config.model, config.in_chans)
    data = ChestXrayDataModule(config.prepared, batch_size=config.batch_size, num_workers=config.num_workers,
                               augment=config.augment, in_chans=config.in_chans,
                               normalization=str(data_cfg["normalization"]), seed=config.seed)
    net = build_model(config.model, len(data.labels), in_chans=config.in_chans, pretrained=config.pretrained,
                      weights=config.weights)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    precision = auto_precision(config)
    fields = _data_fields(config, data, data_cfg)

    run_info: dict[str, Any] = {}
    if resume and (run_dir / RUN_FILE).is_file():
        run_info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    loggers: list[Any] = [CSVLogger(run_dir, name="logs")]
    mlflow_logger = None
    if config.mlflow:
        mlflow_logger = _mlflow_logger(config, run_dir, run_info.get("mlflow_run_id") if resume else None)
        loggers.append(mlflow_logger)
    mode = "max" if config.monitor == "val_auroc" else "min"
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=config.monitor, mode=mode,
                                 save_top_k=1, save_last=True, auto_insert_metric_name=False,
                                 enable_version_counter=False)
    history = MetricsHistory(run_dir)
    all_callbacks: list[Callback] = [history, RngState(), checkpoint, *(callbacks or [])]
    if config.patience:
        all_callbacks.append(EarlyStopping(monitor=config.monitor, mode=mode, patience=config.patience, strict=False))
    if config.freeze == "backbone":
        all_callbacks.append(FreezeBackbone(config.model, config.unfreeze_last))
    trainer = L.Trainer(
        accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
        strategy=config.strategy, precision=precision, max_epochs=config.epochs,
        max_steps=config.max_steps, max_time={"minutes": config.max_minutes} if config.max_minutes else None,
        gradient_clip_val=config.grad_clip or None, callbacks=all_callbacks, logger=loggers,
        val_check_interval=config.val_every or None, check_val_every_n_epoch=None if config.val_every else 1,
        enable_progress_bar=config.progress, enable_model_summary=False, num_sanity_val_steps=1,
        log_every_n_steps=10, default_root_dir=run_dir, plugins=[AtomicCheckpointIO()],
    )
    total_steps = config.epochs * _steps_per_epoch(data, trainer.world_size)
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)
    module = ChestXrayModule(net, list(data.labels), lr=config.lr, weight_decay=config.weight_decay,
                             loss=config.loss, focal_gamma=config.focal_gamma,
                             pos_weight=data.pos_weight().tolist() if config.pos_weight else None,
                             scheduler=config.scheduler, warmup_fraction=config.warmup_fraction,
                             monitor=config.monitor, patience=config.patience, channels_last=config.channels_last,
                             total_steps=total_steps)
    if trainer.is_global_zero:
        _write_run_start(config, run_dir, {**fields, "model_image_size": data_cfg["image_size"],
                                           "precision": precision}, run_info, mlflow_logger)

    start = time.perf_counter()
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=data, ckpt_path=last if resume else None, weights_only=True)
    seconds = time.perf_counter() - start

    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    aurocs = [h["val_auroc"] for h in history.history if not math.isnan(h["val_auroc"])]
    if config.monitor == "val_auroc" and checkpoint.best_model_score is not None:
        best_val = float(checkpoint.best_model_score)
    else:
        best_val = max(aurocs) if aurocs else math.nan
    bundle_dir = None
    if trainer.is_global_zero:
        history.write()
        state_source = best_path if best_path and best_path.is_file() else last if last.is_file() else None
        bundle_dir = _write_run_end(config, run_dir, net, fields, state_source, best_val, mlflow_logger)
    return TrainResult(run_dir=run_dir, bundle_dir=bundle_dir, best_val_auroc=best_val, best_checkpoint=best_path,
                       last_checkpoint=last if last.is_file() else None, epochs=trainer.current_epoch,
                       steps=trainer.global_step, seconds=seconds, train_images=history.train_images,
                       images_per_s=(history.train_images * trainer.world_size / history.train_seconds
                                     if history.train_seconds else 0.0),
                       parameters=count_parameters(net), config=config)
