"""train(): assembles the Trainer around ChestXrayModule and the DataModule, and keeps the run folder.

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
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from chestxray.errors import ConfigError, DiskFullError, TrainingInterrupted
from chestxray.files import atomic_path, disk_full, disk_full_message, kill_point, write_json, write_text
from chestxray.locks import folder_lock, reading
from chestxray.openmp import describe_wait
from chestxray.training.callbacks import (
    AtomicCheckpointIO,
    EpochLines,
    EpochProgressBar,
    FreezeBackbone,
    LastCheckpoint,
    MetricsHistory,
    RngState,
)
from chestxray.training.config import CONFIG_FILE, TrainConfig, config_yaml, validate_config
from chestxray.training.execution import choose_execution
from chestxray.training.precision import choose_precision
from chestxray.training.resume import check_extendable, keep_only_last, read_progress
from chestxray.training.run_dir import has_started, last_checkpoint_problem, refuse_run_dir

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


from chestxray.training.module import ChestXrayModule


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
    """The precision a run uses: config.precision, or for 'auto' the choice of chestxray.training.precision."""
    return choose_precision(config.precision, config.accelerator).precision


def absolute_paths(config: TrainConfig) -> dict[str, str]:
    """The local paths config.yaml records (PREPARED, --weights) made absolute, so `--resume` works from any working
    folder (they were stored as typed: relative to wherever the first command ran)."""
    from chestxray.data.shards import is_remote

    paths = {"prepared": config.prepared} if config.prepared and not is_remote(config.prepared) else {}
    if config.weights:
        paths["weights"] = config.weights
    return {name: str(Path(value).resolve()) for name, value in paths.items()}


def default_run_dir(config: TrainConfig) -> Path:
    """runs/<model>-<UTC timestamp> under the current folder."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model}-{stamp}"


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run; a folder whose run cannot be continued (stopped before its first checkpoint, or
    a damaged last.ckpt) is reused, and says so (chestxray.training.run_dir)."""
    refuse_run_dir(run_dir, resume)
    if not resume and (run_dir / CONFIG_FILE).exists() and not has_started(run_dir):
        problem = last_checkpoint_problem(run_dir)
        why = ("stopped before its first checkpoint" if not (run_dir / "checkpoints" / "last.ckpt").exists()
               else f"cannot be continued: {problem}")
        log.warning("%s: reusing this folder: the run there %s (nothing to resume)", run_dir, why)
        for name in (CONFIG_FILE, RUN_FILE, "metrics.csv", "history.csv"):
            (run_dir / name).unlink(missing_ok=True)
        for name in ("logs", "checkpoints"):
            shutil.rmtree(run_dir / name, ignore_errors=True)


def _tracking_uri(config: TrainConfig, run_dir: Path | None = None) -> str:
    """The tracking URI a run uses: config.mlflow_uri, else the SQLite store mlflow.db beside the run folder
    (runs/mlflow.db for runs/<name>; artifacts in runs/artifacts), never a ./mlruns in whatever folder you are in."""
    folder = run_dir if run_dir is not None else Path(config.out or "runs/run")
    return config.mlflow_uri or f"sqlite:///{folder.resolve().parent / 'mlflow.db'}"


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


def artifact_location(uri: str) -> str | None:
    """Artifact folder of a new MLflow experiment: beside a SQLite store (MLflow would use ./mlruns), else default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
    return None


# MLflow 3's UI opens an experiment without this tag in its GenAI layout (an empty Traces page); ours hold training runs
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of MLflow experiment `name` in the store at `uri`, created if missing with its artifacts beside a
    SQLite store (never MLflow's default ./mlruns of the working folder) and tagged as holding training runs;
    another process may create it meanwhile."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri), tags=dict([EXPERIMENT_KIND]))
    except Exception:  # MLflow's "already exists" (RestException) when a concurrent process won the race
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _mlflow_logger(config: TrainConfig, run_dir: Path, run_id: str | None, task: str = "multilabel"):
    from lightning.pytorch.loggers import MLFlowLogger

    uri = _tracking_uri(config, run_dir)
    return MLFlowLogger(experiment_name=config.experiment, run_name=run_dir.name, tracking_uri=uri, run_id=run_id,
                        artifact_location=artifact_location(uri),
                        tags={"run_dir": str(run_dir.resolve()), "model": config.model, "task": task})


def _best_state(source: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The net's weights from a Lightning checkpoint or a bundle's model.safetensors, and where they came from in
    words for the card (the checkpoint file itself is removed once the bundle holds its weights)."""
    if source.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(source), "the earlier bundle (no later epoch beat it)"
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    origin = f"{source.name} (epoch {int(ckpt.get('epoch', 0)) + 1}, step {int(ckpt.get('global_step', 0))})"
    return {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}, origin


def _state_source(run_dir: Path, best: Path | None, last: Path) -> Path | None:
    """Where the bundle's weights come from: best.ckpt; when an extended run did not beat the best of its earlier
    part, whose best.ckpt was dropped once the bundle held it, the bundle itself; else last.ckpt."""
    if best is not None and best.is_file():
        return best
    kept = run_dir / "bundle" / "model.safetensors"
    if best is not None and kept.is_file():
        return kept
    return last if last.is_file() else None


def _steps_per_epoch(data: Any, world_size: int) -> int:
    """Optimizer steps per epoch on each rank, from the data module's epoch plan (no loader is built)."""
    from chestxray.data.datamodule import plan_epoch

    return len(plan_epoch(data.train_counts(), data.batch_size, world_size=world_size, rank=0,
                          shuffle=True).batch_sizes)


def _data_fields(config: TrainConfig, data: Any, data_cfg: dict[str, Any]) -> dict[str, Any]:
    """What the run was trained on and how inputs are fed: shared by RUN/run.json and the bundle card."""
    from chestxray.data.shards import is_remote, preprocessing

    prepared = config.prepared if is_remote(config.prepared) else str(Path(config.prepared).resolve())
    return {"labels": list(data.labels), "task": data.task, "prepared": prepared,
            "data_fingerprint": data.manifest.get("fingerprint"), "image_size": data.image_size,
            "resize": data.manifest.get("resize", "pad"), "preprocessing": preprocessing(data.manifest),
            "in_chans": config.in_chans, "normalization": data_cfg["normalization"],
            "input_mean": data_cfg["input_mean"], "input_std": data_cfg["input_std"], "pretrained": config.pretrained,
            **({"sources": data.source_record()} if data.source_record() else {})}


def _write_run_start(config: TrainConfig, run_dir: Path, fields: dict[str, Any], run_info: dict[str, Any],
                     mlflow_logger: Any) -> None:
    """Rank zero, before training: RUN/config.yaml, RUN/run.json and the same config as MLflow params/artifact."""
    write_text(run_dir / CONFIG_FILE, config_yaml(config))
    run_info.update(fields)
    if mlflow_logger is not None:
        _log_params(mlflow_logger, config)
        run_info["mlflow_run_id"] = mlflow_logger.run_id
        run_info["mlflow_tracking_uri"] = _tracking_uri(config, run_dir)
        mlflow_logger.experiment.set_experiment_tag(mlflow_logger.experiment_id, *EXPERIMENT_KIND)
        mlflow_logger.experiment.log_artifact(mlflow_logger.run_id, str(run_dir / CONFIG_FILE))
    write_json(run_dir / RUN_FILE, run_info)


def _log_params(mlflow_logger: Any, config: TrainConfig) -> None:
    """The config as MLflow params. MLflow never changes a logged param, so when a resumed run was given other
    settings (an extension's --epochs/--max-steps) the new values go to tags resumed_with.<name> instead."""
    params = {k: str(v) for k, v in config.to_dict().items()}
    logged = mlflow_logger.experiment.get_run(mlflow_logger.run_id).data.params
    mlflow_logger.log_hyperparams({k: v for k, v in params.items() if k not in logged})
    for key, value in params.items():
        if key in logged and logged[key] != value:
            mlflow_logger.experiment.set_tag(mlflow_logger.run_id, f"resumed_with.{key}", value)


def _write_run_end(config: TrainConfig, run_dir: Path, net: nn.Module, fields: dict[str, Any],
                   state_source: Path | None, best_val: float, mlflow_logger: Any) -> Path:
    """Rank zero, after training: RUN/bundle from the best checkpoint, and the run's files as MLflow artifacts."""
    from chestxray.models.bundle import save_bundle

    origin = None
    if state_source is not None:
        state, origin = _best_state(state_source)
        net.load_state_dict(state)
    trained = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card = {"architecture": config.model, "num_labels": len(fields["labels"]), **fields,
            "thresholds": None, "threshold_method": None, "seed": config.seed,
            "metrics": {"training": {"split": "val", "val_auroc": best_val, "date": trained}},
            "run": str(run_dir.resolve()), "weights_from": origin}
    card["model_card"] = _model_card(card, config.prepared)
    bundle_dir = save_bundle(run_dir / "bundle", net.cpu(), card)
    if mlflow_logger is not None:
        client, run_id = mlflow_logger.experiment, mlflow_logger.run_id
        if math.isfinite(best_val):
            client.log_metric(run_id, "best_val_auroc", best_val)
        for name in ("metrics.csv", "history.csv", CONFIG_FILE):
            client.log_artifact(run_id, str(run_dir / name))
        client.log_artifacts(run_id, str(bundle_dir), "bundle")
        log_pyfunc(mlflow_logger._tracking_uri, run_id, run_dir, bundle_dir, config.register_model)
    return bundle_dir


def _model_card(card: dict[str, Any], prepared: str) -> dict[str, Any]:
    """The bundle's model card (intended use, training population, limits) from the PREPARED manifest."""
    from chestxray.data.shards import read_manifest
    from chestxray.errors import DataError
    from chestxray.models.model_card import model_card

    try:
        manifest = read_manifest(prepared)
    except DataError as exc:  # read at the start of training; gone now (a remote store): a card without counts
        log.warning("model card without the training population: %s", exc)
        manifest = None
    return model_card(card, manifest)


def log_pyfunc(uri: str, run_id: str, run_dir: Path, bundle_dir: Path, register_as: str = "") -> Any:
    """Log the bundle as an MLflow pyfunc model in the run (input example: RUN/input_example.png, a gray square)."""
    import mlflow
    import numpy as np
    from PIL import Image

    from chestxray.models.pyfunc import log_bundle_model

    size = int(json.loads((bundle_dir / "card.json").read_text(encoding="utf-8"))["image_size"])
    example = run_dir / "input_example.png"
    with atomic_path(example) as tmp:
        Image.fromarray(np.full((size, size), 128, np.uint8)).save(tmp, format="PNG")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            info = log_bundle_model(bundle_dir, example, register_as or None)
    finally:
        mlflow.set_tracking_uri(previous)
    run_file = run_dir / RUN_FILE
    if run_file.exists():  # where `mlflow.pyfunc.load_model` finds it
        write_json(run_file, {**json.loads(run_file.read_text(encoding="utf-8")), "mlflow_model_uri": info.model_uri})
    return info


def train(config: TrainConfig, resume: bool = False, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train config.model on config.prepared into a run folder (config.out); resume=True continues from last.ckpt.

    Writes RUN/config.yaml before training, then checkpoints, metrics.csv, history.csv and RUN/bundle (from the
    best checkpoint). Extra Lightning callbacks may be passed (e.g. for inspection in tests). Runs on every rank
    under DDP (torchrun / SLURM / Lightning's launcher); files are written by rank zero only.
    """
    validate_config(config)
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    config = replace(config, out=str(run_dir), **absolute_paths(config))
    zero = rank_zero_only.rank == 0
    with folder_lock(run_dir, "train") if zero else contextlib.nullcontext():  # one writer per run folder
        if zero:  # ranks started later by Lightning's launcher find rank zero's config.yaml
            _check_run_dir(run_dir, resume)
            if resume:
                check_extendable(run_dir, config)
        with reading(config.prepared, "train"), \
                _allow_file_store(_tracking_uri(config, run_dir) if config.mlflow else ""):
            try:
                return _fit(config, run_dir, resume, callbacks)
            except Exception as exc:  # a full disk: one line saying what was kept and how to go on
                if disk_full(exc) is None:
                    raise
                raise DiskFullError(disk_full_message(run_dir, exc, _kept(run_dir))) from None


def _kept(run_dir: Path) -> str:
    """What a run stopped by a full disk kept, and the command that goes on from it (the run_dir rule)."""
    problem = last_checkpoint_problem(run_dir)
    if problem is not None:
        return (f"nothing to continue from ({problem}); free some space, then run the same command again (the "
                "folder is reused)")
    try:
        done = read_progress(run_dir / "checkpoints" / "last.ckpt")
        state = f" ({done.epochs} whole epoch(s), step {done.step})"
    except ConfigError:
        state = ""
    bundle = "; bundle/ is not written yet" if not (run_dir / "bundle" / "card.json").is_file() else ""
    return (f"kept checkpoints/last.ckpt{state}{bundle}; free some space, then continue with: chestxray train "
            f"--resume {run_dir}")


def _interrupted(run_dir: Path, last: Path, trainer: L.Trainer) -> str:
    """What an interrupted run saved and the command that continues it."""
    if last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        return (f"training interrupted during epoch {trainer.current_epoch + 1}; {last} holds the state after epoch "
                f"{int(ckpt.get('epoch', 0)) + 1} (step {int(ckpt.get('global_step', 0))}), metrics.csv the steps so "
                f"far; continue with: chestxray train --resume {run_dir}")
    return (f"training interrupted during epoch {trainer.current_epoch + 1}, before the first checkpoint: nothing to "
            f"resume; run the same command again (the folder {run_dir} is reused)")


def _fit(config: TrainConfig, run_dir: Path, resume: bool, callbacks: list[Callback] | None) -> TrainResult:
    """train()'s work once the config is checked: build data, model and Trainer, fit, write the bundle."""
    from lightning.pytorch.loggers import CSVLogger

    from chestxray.data.datamodule import ChestXrayDataModule
    from chestxray.data.sampling import source_list
    from chestxray.models import backbone_parameter_names, build_model, count_parameters, model_data_config

    L.seed_everything(config.seed, workers=True, verbose=False)
    data_cfg = model_data_config(config.model, config.in_chans)
    data = ChestXrayDataModule(config.prepared, batch_size=config.batch_size, num_workers=config.num_workers,
                               augment=config.augment, in_chans=config.in_chans,
                               normalization=data_cfg["normalization"], seed=config.seed,
                               verify={True: "checksums", False: "sizes", None: "auto"}[config.verify_checksums],
                               verify_splits=("train", "val"), source_sampling=config.source_sampling,
                               sources=source_list(config.sources))
    # a new head starts at the constant that minimises the loss: the training log-odds, or 0 when pos_weight
    # balances the classes (then p = 0.5 is the weighted loss's minimum); see chestxray.models.factory
    head_bias = None if config.pos_weight else data.log_prior().tolist()
    net = build_model(config.model, len(data.labels), in_chans=config.in_chans, pretrained=config.pretrained,
                      weights=config.weights, offline=config.offline or None, dropout=config.dropout,
                      head_bias=head_bias)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    choice = choose_precision(config.precision, config.accelerator)
    precision = choice.precision
    log.info("precision %s (%s)", precision, choice.reason)
    fields = {**_data_fields(config, data, data_cfg), "precision": precision, "precision_reason": choice.reason}

    run_info: dict[str, Any] = {}
    if resume and (run_dir / RUN_FILE).is_file():
        run_info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    loggers: list[Any] = [CSVLogger(run_dir, name="logs")]
    mlflow_logger = None
    if config.mlflow:
        mlflow_logger = _mlflow_logger(config, run_dir, run_info.get("mlflow_run_id") if resume else None, data.task)
        loggers.append(mlflow_logger)
    mode = "max" if config.monitor == "val_auroc" else "min"
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=config.monitor, mode=mode,
                                 save_top_k=1, save_last=False, auto_insert_metric_name=False,
                                 enable_version_counter=False)
    history = MetricsHistory(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    # listed after `checkpoint`, so last.ckpt carries that callback's updated best score
    all_callbacks: list[Callback] = [history, RngState(), checkpoint, LastCheckpoint(last.parent), *(callbacks or [])]
    bar = config.progress and sys.stdout.isatty()  # in a log file or a pipe: one plain line per epoch instead
    if config.progress:
        all_callbacks.append(EpochProgressBar() if bar else EpochLines(history, run_dir.name))
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
        enable_progress_bar=bar, enable_model_summary=False, num_sanity_val_steps=1,
        log_every_n_steps=10, default_root_dir=run_dir, plugins=[AtomicCheckpointIO()],
    )
    total_steps = config.epochs * _steps_per_epoch(data, trainer.world_size)
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)
    done = read_progress(last) if resume else None
    steps_left = total_steps - (done.step if done is not None else 0)
    execution = choose_execution(config.channels_last, config.compile, model=config.model, precision=precision,
                                 accelerator=config.accelerator, image_size=data.image_size,
                                 planned_images=max(0, steps_left) * config.batch_size)
    log.info("training step: %s", execution.reason)  # recorded in run.json beside the precision
    module = ChestXrayModule(net, list(data.labels), lr=config.lr, weight_decay=config.weight_decay,
                             loss=config.loss, focal_gamma=config.focal_gamma,
                             pos_weight=data.pos_weight().tolist() if config.pos_weight else None,
                             scheduler=config.scheduler, warmup_fraction=config.warmup_fraction,
                             monitor=config.monitor, patience=config.patience, channels_last=config.channels_last,
                             total_steps=total_steps, task=data.task, backbone_lr_scale=config.backbone_lr_scale,
                             backbone_params=backbone_parameter_names(net, config.model),
                             warmup_steps=done.warmup_steps if done is not None else None,
                             missing_labels=data.missing_labels, compile_net=execution.compile)
    if trainer.is_global_zero:
        _write_run_start(config, run_dir, {**fields, "model_image_size": data_cfg["image_size"],
                                           "memory_format": execution.memory_format, "compile": execution.compile,
                                           "execution_reason": execution.reason,
                                           "openmp_wait": describe_wait()}, run_info, mlflow_logger)

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # notices of Lightning's that the user cannot act on, for this fit only:
            # the data module skips the batches a mid-epoch checkpoint already trained
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            # --resume continues in its own run folder, which of course holds checkpoints
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            # a short epoch has fewer batches than the step-logging interval; metrics.csv logs every step anyway
            warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                                    "logging interval")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # torch, on Lightning
            # our IterableDataset's length is exact per rank and worker (chestxray.data.datamodule)
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
            # a label without positives in a validation batch: chestxray leaves such labels out of the AUROC
            warnings.filterwarnings("ignore", message="No positive samples in targets")
            kill_point("fit")  # test-only: a kill -9 while a run is training (tune's killed-trial tests)
            trainer.fit(module, datamodule=data, ckpt_path=last if resume else None, weights_only=True)
    except SystemExit:  # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1)
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left Ctrl-C ignored
        raise TrainingInterrupted(_interrupted(run_dir, last, trainer)) from None
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
        bundle_dir = _write_run_end(config, run_dir, net, fields, _state_source(run_dir, best_path, last), best_val,
                                    mlflow_logger)
        keep_only_last(last, best_path)  # the bundle now holds the best weights
    if best_path is not None and not best_path.is_file():
        best_path = None
    return TrainResult(run_dir=run_dir, bundle_dir=bundle_dir, best_val_auroc=best_val, best_checkpoint=best_path,
                       last_checkpoint=last if last.is_file() else None, epochs=trainer.current_epoch,
                       steps=trainer.global_step, seconds=seconds, train_images=history.train_images,
                       images_per_s=(history.train_images * trainer.world_size / history.train_seconds
                                     if history.train_seconds else 0.0),
                       parameters=count_parameters(net), config=config)
