"""`chestxray train`, `chestxray compare` and `chestxray models` (area C)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, friendly, print_table, quiet_lightning
from chestxray.training.config import TrainConfig

_DEFAULTS = TrainConfig()


def _d(name: str) -> str:
    """' (default: X)' for a TrainConfig field (flags default to None so a YAML value is not overridden)."""
    value = getattr(_DEFAULTS, name)
    shown = {"": "none", None: "none"}.get(value, value) if not isinstance(value, bool) else str(value).lower()
    return f" (default: {shown})"


def _settings(**flags: object) -> dict[str, object]:
    """CLI values that were given (None means 'not given', so YAML and defaults stay in force)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}


_SWITCH_WORDS = {"true", "false", "yes", "no", "on", "off", "0", "1"}


def _not_a_switch_value(prepared: str | None) -> None:
    """'train --resume RUN --progress false': switches take no value, so 'false' would land in PREPARED."""
    if prepared is not None and prepared.lower() in _SWITCH_WORDS and not Path(prepared).exists():
        from chestxray.errors import ConfigError

        raise ConfigError(f"PREPARED {prepared!r} is not a folder: switches such as --progress and --mlflow take no "
                          f"value; write --progress or --no-progress (--mlflow or --no-mlflow, …)")


@app.command(help="Train a classifier on a PREPARED folder into a run folder (config.yaml, checkpoints/, "
             "metrics.csv, history.csv, bundle/), mirrored to MLflow: by default the SQLite store mlflow.db beside the "
             "run folder (runs/mlflow.db for runs/NAME; browse it with 'chestxray ui'), or --mlflow-uri, or --no-mlflow. "
             "Settings: defaults ← --config YAML ← flags.\n\n"
             "Example: chestxray train runs/prepared --model densenet121 --pretrained imagenet --epochs 8 "
             "--batch-size 16 --lr 1e-4 --augment advanced --out runs/dn121\n\n"
             "Example (continue a stopped run): chestxray train --resume runs/dn121\n\n"
             "Example (fine-tune offline ImageNet weights, backbone at lr/10): chestxray train runs/prepared "
             "--model efficientnet-lite0 --recipe finetune --out runs/lite0\n\n"
             "Example (2 nodes × 4 GPUs under SLURM): srun chestxray train runs/prepared --devices 4 --num-nodes 2 "
             "--strategy ddp")
@friendly
def train(
    prepared: Optional[str] = typer.Argument(None, help="PREPARED folder (from 'chestxray prepare'), or its URL: "
                                             "http(s)://… or s3://… (shards are streamed)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of settings (flags override it)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the stopped run RUN from its last.ckpt."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Architecture (see 'chestxray models'), or "
                                        "any timm model as timm/<name>." + _d("model")),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="scratch | frozen (ImageNet backbone frozen, new "
                                         "head) | finetune (last 2 stages + head, backbone at lr × 0.1); flags "
                                         "override its settings."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="'imagenet': the model's ImageNet weights, "
                                             "downloaded once into $TORCH_HOME/hub/checkpoints (or timm's hub cache; "
                                             "efficientnet-lite0 needs no network)." + _d("pretrained")),
    offline: Optional[bool] = typer.Option(None, "--offline", envvar="CHESTXRAY_OFFLINE",
                                           help="Never download weights; read the local caches only." + _d("offline")),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Start from a local state dict "
                                           "(.pth/.pt/.ckpt/.safetensors)."),
    in_chans: Optional[int] = typer.Option(None, "--in-chans", help="1 (grayscale) or 3 (replicated)." + _d("in_chans")),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help=_d("epochs").strip()),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=_d("batch_size").strip()),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW)." + _d("lr")),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help=_d("weight_decay").strip()),
    augment: Optional[str] = typer.Option(None, "--augment", help="none | minimal (random horizontal flip: it mirrors the "
                                          "laterality markers and puts the heart on the right) | advanced (flip, "
                                          "affine, crop, perspective, brightness/contrast)." + _d("augment")),
    loss: Optional[str] = typer.Option(None, "--loss", help="bce | focal (a multiclass catalog always uses softmax "
                                       "cross-entropy, focal-scaled with focal)." + _d("loss")),
    pos_weight: Optional[bool] = typer.Option(None, "--pos-weight/--no-pos-weight",
                                              help="Weight positives by the train split's neg/pos ratio "
                                              "(multiclass: class weights N/(K*n_class) in the cross-entropy)." + _d("pos_weight")),
    sources: Optional[str] = typer.Option(None, "--sources", help="A merged dataset's sources to train and validate "
                                          "on, comma-separated (default: all)." + _d("sources")),
    source_sampling: Optional[str] = typer.Option(None, "--source-sampling", help="Each source's share of an epoch: "
                                                  "natural (its size) | balanced (equal) | NAME=W,NAME=W (weights)."
                                                  + _d("source_sampling")),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="cosine (warm-up then cosine) | plateau." + _d("scheduler")),
    monitor: Optional[str] = typer.Option(None, "--monitor", help="val_auroc | val_loss (best ckpt, early stop)." + _d("monitor")),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early-stopping patience (0: off)." + _d("patience")),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N steps (0: each epoch)." + _d("val_every")),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="none | backbone (only the head trains)." + _d("freeze")),
    unfreeze_last: Optional[int] = typer.Option(None, "--unfreeze-last", help="With --freeze backbone: also "
                                                "fine-tune the last N backbone blocks." + _d("unfreeze_last")),
    backbone_lr_scale: Optional[float] = typer.Option(None, "--backbone-lr-scale", help="Backbone learning rate "
                                                      "= --lr × this (the head uses --lr)." + _d("backbone_lr_scale")),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm (0: off)." + _d("grad_clip")),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto | 32-true | 16-mixed | bf16-mixed." + _d("precision")),
    compile: Optional[str] = typer.Option(None, "--compile", help="torch.compile the training step: auto (on the CPU "
                                          "where it is measured to pay back its compile time for this run; see "
                                          "docs/performance.md) | on | off. Checkpoints and bundle are the same "
                                          "either way." + _d("compile")),
    accelerator: Optional[str] = typer.Option(None, "--accelerator", help="auto | cpu | gpu." + _d("accelerator")),
    devices: Optional[str] = typer.Option(None, "--devices", help="Devices per node (number or 'auto')." + _d("devices")),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help=_d("num_nodes").strip()),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto | ddp | ..." + _d("strategy")),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Data loader processes per device." + _d("num_workers")),
    verify_checksums: Optional[bool] = typer.Option(None, "--verify-checksums/--no-verify-checksums",
                                                    help="Before training, compare the sha256 of the train and val "
                                                    "shards with manifest.json (default: for a local folder, not "
                                                    "for a URL; sizes are always checked)."),
    seed: Optional[int] = typer.Option(None, "--seed", help=_d("seed").strip()),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps (-1: no limit)." + _d("max_steps")),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after this much training time." + _d("max_minutes")),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<model>-<time>)."),
    mlflow: Optional[bool] = typer.Option(None, "--mlflow/--no-mlflow", help="Mirror the run to MLflow." + _d("mlflow")),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="Tracking URI (default: sqlite:///<run folder's parent>/mlflow.db)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name." + _d("experiment")),
    register_model: Optional[str] = typer.Option(None, "--register-model",
                                                 help="Also register the logged MLflow model under this name."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show the progress bar." + _d("progress")),
) -> None:
    from dataclasses import replace

    from chestxray.errors import ConfigError, TrainingInterrupted
    from chestxray.training.config import CONFIG_FILE, resolve_config

    _not_a_switch_value(prepared)
    base = None
    if resume is not None:
        base = resume / CONFIG_FILE
        if not base.is_file():
            raise ConfigError(f"cannot resume {resume}: no {CONFIG_FILE} there (not a run folder written by "
                              "'chestxray train'); check the path")
        out = resume
    settings = _settings(prepared=prepared, model=model, pretrained=pretrained, offline=offline, weights=weights,
                         in_chans=in_chans, backbone_lr_scale=backbone_lr_scale,
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, augment=augment,
                         loss=loss, pos_weight=pos_weight, sources=sources, source_sampling=source_sampling,
                         scheduler=scheduler, monitor=monitor, patience=patience,
                         val_every=val_every, freeze=freeze, unfreeze_last=unfreeze_last, grad_clip=grad_clip,
                         precision=precision, compile=compile, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                         strategy=strategy, num_workers=num_workers, verify_checksums=verify_checksums, seed=seed,
                         max_steps=max_steps,
                         max_minutes=max_minutes, out=out, mlflow=mlflow, mlflow_uri=mlflow_uri,
                         experiment=experiment, register_model=register_model, progress=progress)
    from chestxray.training.recipes import recipe_settings

    resolved = resolve_config(base, recipe_settings(recipe), config, where="command line", **settings)  # before torch
    if resolved.out:
        from chestxray.training.run_dir import refuse_run_dir

        refuse_run_dir(resolved.out, resume=resume is not None)  # a finished run is refused before torch loads
    quiet_lightning()
    from chestxray.training.train import default_run_dir
    from chestxray.training.train import train as run_training

    resolved = replace(resolved, out=resolved.out or str(default_run_dir(resolved)))
    try:
        result = run_training(resolved, resume=resume is not None)
    except TrainingInterrupted as exc:
        err_console.print(f"[yellow]interrupted:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if result.bundle_dir is not None:
        console.print(f"trained {resolved.model}: best val AUROC {result.best_val_auroc:.4f} after {result.epochs} "
                      f"epoch(s) ({result.steps} steps), {result.seconds:.0f} s, {result.images_per_s:.0f} images/s → run {result.run_dir} "
                      f"(bundle {result.bundle_dir})", highlight=False, soft_wrap=True)


@app.command(help="Quick screen before a study: train several models on the same PREPARED data with one seed and "
             "print one table (val AUROC, time, parameters, images/s; also OUT/comparison.csv). Validation only: no "
             "test split, no intervals or tests. To compare methods, use 'chestxray study' (seeds, test evaluation, "
             "paired tests); to compare two runs you have, 'chestxray compare-runs'.\n\n"
             "Example: chestxray compare runs/prepared --models cnn-small,resnet18,densenet121 --epochs 2 "
             "--budget-minutes 10 --out runs/compare")
@friendly
def compare(
    prepared: str = typer.Argument(..., help="PREPARED folder or URL."),
    models: str = typer.Option("cnn-small,resnet18,densenet121", "--models", help="Comma-separated names."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes", help="Training-time cap per model."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML of shared settings."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers"),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Folder for the runs and comparison.csv."),
    mlflow: Optional[bool] = typer.Option(None, "--mlflow/--no-mlflow"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
) -> None:
    from rich.table import Table

    from chestxray.training.config import resolve_config

    names = [m.strip() for m in models.split(",") if m.strip()]
    base = resolve_config(config, where="command line", **_settings(
        prepared=prepared, model=names[0] if names else None, epochs=epochs, batch_size=batch_size, lr=lr,
        seed=seed, num_workers=num_workers, mlflow=mlflow, progress=progress))
    quiet_lightning()
    from chestxray.workflows.compare import compare_models

    table = compare_models(base, names, out, budget_minutes=budget_minutes)
    view = Table(title=f"{prepared} — same data, seed {base.seed}, {base.epochs} epoch(s)")
    for column in ("model", "val AUROC", "seconds", "parameters", "images/s"):
        view.add_column(column, justify="left" if column == "model" else "right")
    for row in table.itertuples():
        auroc = "n/a" if row.val_auroc is None or row.val_auroc != row.val_auroc else f"{row.val_auroc:.4f}"
        view.add_row(row.model, auroc, f"{row.seconds:.1f}", f"{row.parameters:,}", f"{row.images_per_s:.1f}")
    print_table(view)
    console.print(f"compared {len(table)} model(s) → {out / 'comparison.csv'}", highlight=False)


@app.command("models", help="List the registered architectures with their input settings, and how to use any timm model.\n\n"
             "Example: chestxray models")
@friendly
def models_list() -> None:
    from chestxray.models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        weights = "imagenet" if spec.has_imagenet else "-"
        console.print(f"{name:18s} {spec.image_size:4d} px  pretrained: {weights:8s}  {spec.description}",
                      highlight=False, soft_wrap=True)
    console.print("Any timm architecture works as timm/<name> (e.g. --model timm/convnext_tiny --pretrained imagenet; "
                  "names: python -c 'import timm; print(timm.list_models(pretrained=True))'). Recipes: --recipe "
                  "scratch | frozen | finetune. Cached weights: chestxray weights list.", highlight=False,
                  soft_wrap=True)
