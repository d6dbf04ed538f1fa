"""The typed training config: defaults ← YAML file ← explicit settings (CLI flags), validated once before training.

A run folder's config.yaml holds exactly these fields, so `resolve_config(base=RUN/config.yaml)` rebuilds the run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from chestxray.data.labels import closest
from chestxray.errors import ConfigError, DataError, ModelError

CONFIG_FILE = "config.yaml"  # the resolved config in every run folder
LOSSES = ("bce", "focal")
SCHEDULERS = ("cosine", "plateau")
MONITORS = ("val_auroc", "val_loss")
FREEZE = ("none", "backbone")
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "bf16-mixed")
COMPILE = ("auto", "on", "off")  # chestxray.training.execution.COMPILE_CHOICES (that module imports torch)
# The built-in model and augmentation names, so a config is checked before torch is imported (the registries need
# it). tests/training/test_config.py keeps them equal to the registries; a name registered by a library user is
# checked against the registry itself (already imported by whoever registered it).
BUILTIN_MODELS = ("cnn-small", "cnn-tiny", "densenet121", "efficientnet-lite0", "efficientnet_b0", "resnet152", "resnet18",
                  "resnet50")
BUILTIN_POLICIES = ("none", "minimal", "advanced")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (paths are stored as given; the run folder records them)."""

    prepared: str = ""
    model: str = "densenet121"
    pretrained: str | None = None  # None or "imagenet" (downloaded into / read from the torch hub cache)
    weights: str | None = None  # a local state dict (.pth/.pt/.ckpt/.safetensors)
    in_chans: int = 1
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    augment: str = "minimal"
    dropout: float | None = None  # None: the model's own; else the rate of every nn.Dropout in the model
    loss: str = "bce"
    focal_gamma: float = 2.0
    pos_weight: bool = False  # weight positives by negatives/positives of the train split (annotated images only)
    sources: str = ""  # comma-separated source names of a merged dataset to train and validate on ("" or all: all)
    source_sampling: str = "natural"  # natural | balanced | NAME=W,NAME=W: each source's share of an epoch
    scheduler: str = "cosine"  # warm-up then cosine per step, or ReduceLROnPlateau on `monitor`
    warmup_fraction: float = 0.05  # share of all steps spent warming up (cosine only)
    monitor: str = "val_auroc"  # what best checkpoint, early stopping and plateau watch
    patience: int = 5  # validations without improvement before stopping; 0 turns early stopping off
    val_every: int = 0  # 0: validate each epoch; N: every N training steps
    freeze: str = "none"  # "backbone": only the head trains
    unfreeze_last: int = 0  # with freeze=backbone: also train the last N backbone blocks
    backbone_lr_scale: float = 1.0  # backbone parameters train at lr × this (the head at lr), e.g. 0.1 to fine-tune
    offline: bool = False  # never download weights (also CHESTXRAY_OFFLINE=1); read the caches only
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto: bf16-mixed (16-mixed) on GPU, bf16-mixed on CPUs with native bf16, else 32-true
    channels_last: bool = True
    compile: str = "auto"  # torch.compile the training step: auto (where measured to pay back; training.execution)|on|off
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # e.g. "ddp"
    num_workers: int = 2
    verify_checksums: bool | None = None  # compare the sha256 of the train/val shards with the manifest before training
    # (None: for a local folder, not for a URL; sizes are always checked)
    seed: int = 0
    max_steps: int = -1  # -1: no step limit
    max_minutes: float = 0.0  # 0: no time limit (otherwise training stops after this budget)
    out: str = ""  # run folder; "" → runs/<model>-<UTC time>
    mlflow: bool = True
    mlflow_uri: str = ""  # "" → sqlite:///<run folder's parent>/mlflow.db (e.g. runs/mlflow.db); or a server URL
    experiment: str = "chestxray"
    register_model: str = ""  # also register the logged MLflow pyfunc model under this name ("" → not registered)
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(TrainConfig)}


def read_settings_file(path: str | Path, option: str = "--config") -> dict[str, Any]:
    """A YAML mapping of setting: value with keys normalised (- → _); a missing file, bad YAML or a non-mapping
    raise ConfigError naming the file and the option it came from."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; check the {option} path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML mapping (keys may use - or _); unknown keys raise ConfigError with the closest name."""
    return _check_keys(read_settings_file(path), str(path))


def _check_keys(settings: dict[str, Any], where: str) -> dict[str, Any]:
    for key in settings:
        if key not in FIELDS:
            raise ConfigError(f"{where}: unknown setting {key!r}{closest(key, list(FIELDS))}; "
                              f"valid settings: {', '.join(FIELDS)}")
    return settings


def _coerce(name: str, value: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's type (int, float, bool, str or None)."""
    kind = str(FIELDS[name].type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{where}: setting {name!r} cannot be empty; give a value or leave the setting out")
    try:
        if name == "compile" and isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        if name == "devices":
            return int(value) if str(value).lstrip("-").isdigit() else str(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "yes", "1")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: setting {name!r} = {value!r} is not a valid {kind}") from None


def resolve_config(*layers: dict[str, Any] | str | Path | None, where: str = "settings", **settings: Any
                   ) -> TrainConfig:
    """defaults ← each layer in order (a dict or a YAML path; None skipped) ← settings whose value is not None.

    The result is validated (validate_config) before it is returned.
    """
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}  # where each value came from, so an error names the YAML file or the flags
    for layer in layers:
        if layer is None:
            continue
        values = read_yaml(layer) if isinstance(layer, (str, Path)) else _check_keys(dict(layer), where)
        if isinstance(layer, (str, Path)) and _is_run_config(Path(layer), values):
            values.pop("out")  # a run's own config.yaml reused as a recipe: a new run, not the stored folder
        merged.update(values)
        source.update(dict.fromkeys(values, str(layer) if isinstance(layer, (str, Path)) else where))
    flags = _check_keys({k: v for k, v in settings.items() if v is not None}, where)
    merged.update(flags)
    source.update(dict.fromkeys(flags, where))
    config = TrainConfig(**{k: _coerce(k, v, source[k]) for k, v in merged.items()})
    validate_config(config)
    return config


def _is_run_config(path: Path, values: dict[str, Any]) -> bool:
    """True for RUN/config.yaml whose stored out: is that RUN folder (given as --config, its out: is not reused)."""
    out = values.get("out")
    return bool(out) and path.name == CONFIG_FILE and Path(str(out)).resolve() == path.resolve().parent


def validate_config(config: TrainConfig) -> None:
    """Cheap checks of every setting (names, ranges, the PREPARED folder); raises Config/Data/ModelError."""
    def one_of(name: str, value: Any, valid: tuple | list) -> None:
        if value not in valid:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of {list(valid)}"
                              f"{closest(str(value), [str(v) for v in valid])}")

    for name, value in config.to_dict().items():  # NaN passes every comparison (nan < 0 is False): refuse it first
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    builtin = config.model in BUILTIN_MODELS
    if not builtin and not config.model.startswith("timm/") and "chestxray.models" not in sys.modules:
        raise ModelError(f"unknown model {config.model!r}{closest(config.model, list(BUILTIN_MODELS))}; choose one "
                         f"of: {', '.join(sorted(BUILTIN_MODELS))}")
    if not builtin or config.pretrained is not None:  # timm/<name>, a caller's model or weights: the registry (torch)
        from chestxray.models.registry import PRETRAINED_CHOICES, get_spec

        spec = get_spec(config.model)  # a model registered by the caller; an unknown name raises ModelError
        if config.pretrained and not spec.has_imagenet:
            raise ModelError(f"model {config.model!r} has no ImageNet weights; train it from scratch (leave out "
                             "--pretrained) or pass --weights FILE")
    if config.pretrained is not None:
        one_of("pretrained", config.pretrained, PRETRAINED_CHOICES)
    if config.pretrained and config.weights:
        raise ConfigError("give either --pretrained or --weights, not both")
    if config.weights and not Path(config.weights).is_file():
        raise ModelError(f"--weights {config.weights}: no such file; check the path, or leave --weights out "
                         "to train from random weights")
    one_of("in_chans", config.in_chans, (1, 3))
    if config.augment not in BUILTIN_POLICIES and "chestxray.data.augment" in sys.modules:
        from chestxray.data.augment import list_policies

        one_of("augment", config.augment, list_policies())
    else:
        one_of("augment", config.augment, BUILTIN_POLICIES)
    one_of("loss", config.loss, LOSSES)
    one_of("scheduler", config.scheduler, SCHEDULERS)
    one_of("monitor", config.monitor, MONITORS)
    one_of("freeze", config.freeze, FREEZE)
    one_of("precision", config.precision, PRECISIONS)
    one_of("compile", config.compile, COMPILE)
    positive = {"epochs": config.epochs, "batch_size": config.batch_size, "num_nodes": config.num_nodes}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ConfigError(f"--lr must be a positive number, got {config.lr}")
    if not (config.backbone_lr_scale > 0 and math.isfinite(config.backbone_lr_scale)):
        raise ConfigError(f"--backbone-lr-scale must be a positive number, got {config.backbone_lr_scale}")
    non_negative = {"weight_decay": config.weight_decay, "focal_gamma": config.focal_gamma,
                    "patience": config.patience, "val_every": config.val_every, "unfreeze_last": config.unfreeze_last,
                    "grad_clip": config.grad_clip, "num_workers": config.num_workers, "max_minutes": config.max_minutes}
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    from chestxray.data.sampling import parse_sampling

    parse_sampling(config.source_sampling)
    if config.sources and not [n for n in config.sources.split(",") if n.strip()]:
        raise ConfigError(f"--sources {config.sources!r}: expected comma-separated source names, e.g. nih,kaggle")
    if config.dropout is not None and not 0 <= config.dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {config.dropout}")
    if config.dropout is not None:
        from chestxray.models.factory import has_dropout  # torch, only when --dropout is given

        if not has_dropout(config.model):
            raise ConfigError(f"--dropout: model {config.model!r} has no dropout layer; leave dropout out")
    if not 0 <= config.warmup_fraction < 1:
        raise ConfigError(f"--warmup-fraction must be in [0, 1), got {config.warmup_fraction}")
    if config.unfreeze_last and config.freeze != "backbone":
        raise ConfigError("--unfreeze-last N needs --freeze backbone (it says which backbone blocks still train)")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ConfigError(f"--max-steps must be -1 (no limit) or positive, got {config.max_steps}")
    if not config.prepared:
        raise DataError("no PREPARED folder given; create one with 'chestxray prepare CATALOG --out PREPARED'")
    folder = Path(config.prepared)
    if "://" not in config.prepared and (folder / "catalog.csv").is_file() and not (folder / "manifest.json").is_file():
        raise DataError(f"{config.prepared} is a catalog, not a PREPARED folder; prepare it first: 'chestxray prepare "
                        f"{config.prepared} --out {folder.parent / (folder.name + '-prepared')}', then train on that")
    if "://" not in config.prepared and not (folder / "manifest.json").is_file():
        what = "does not exist" if not folder.exists() else "has no manifest.json"
        raise DataError(f"PREPARED folder {config.prepared} {what}; create one with "
                        "'chestxray prepare CATALOG --out PREPARED' and pass that folder")


def config_yaml(config: TrainConfig) -> str:
    """The config as YAML text, fields in declaration order (what RUN/config.yaml holds)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
