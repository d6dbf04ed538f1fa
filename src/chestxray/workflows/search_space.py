"""The search space of `chestxray tune`: a YAML file of parameters (ranges and choices), sampler and pruner.

    params:                                    # TrainConfig settings to search; anything else comes from --config
      lr: {low: 1.0e-5, high: 1.0e-2, log: true}   # a range (float or int, by the setting's type)
      batch_size: [16, 32, 64]                 # a list of choices
      epochs: 4                                # a single value: fixed for every trial
    sampler: {name: tpe}                       # tpe | random, plus the Optuna sampler's own arguments
    pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 1}   # median | hyperband | none, plus arguments

Parameters that only matter under another setting are sampled only then (focal_gamma with loss focal,
unfreeze_last with freeze backbone, warmup_fraction with scheduler cosine, dropout with a model that has dropout).
Everything is checked here, before any training: names (closest match), ranges, choices (by TrainConfig's own
validation), sampler and pruner arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chestxray.data.labels import closest
from chestxray.errors import ChestXrayError, ConfigError
from chestxray.models.factory import has_dropout
from chestxray.training.config import FIELDS, TrainConfig, resolve_config

log = logging.getLogger(__name__)

# Settings a search may vary (paths, devices and tracking stay fixed: they come from --config or the flags).
TUNABLE = ("lr", "weight_decay", "batch_size", "augment", "model", "pretrained", "in_chans", "freeze",
           "unfreeze_last", "loss", "focal_gamma", "pos_weight", "scheduler", "warmup_fraction", "dropout",
           "epochs", "grad_clip", "patience", "max_steps", "max_minutes")
# parameter → (setting, value) under which it is sampled at all
CONDITIONS = {"focal_gamma": ("loss", "focal"), "unfreeze_last": ("freeze", "backbone"),
              "warmup_fraction": ("scheduler", "cosine")}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
RANGE_KEYS = ("low", "high", "log", "step")
TOP_KEYS = ("params", "sampler", "pruner")

DEFAULT_SPACE_YAML = """\
# chestxray tune's default search space (used when --space is not given)
params:
  lr: {low: 1.0e-5, high: 1.0e-2, log: true}
  weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}
  batch_size: [16, 32, 64]
  augment: [minimal, advanced]
  loss: [bce, focal]
  focal_gamma: {low: 0.5, high: 3.0}          # only when loss is focal
  pos_weight: [false, true]
  scheduler: [cosine, plateau]
  warmup_fraction: {low: 0.0, high: 0.2}      # only when scheduler is cosine
  dropout: {low: 0.0, high: 0.5}              # only for models with a dropout layer (cnn-small, efficientnet_b0)
sampler: {name: tpe}
pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 1}
"""


@dataclass(frozen=True)
class Param:
    """One searched setting: a list of choices, or a float/int range (log scale optional)."""

    name: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def kind(self) -> str:
        if self.choices:
            return "categorical"
        return "int" if isinstance(self.low, int) else "float"


@dataclass(frozen=True)
class SearchSpace:
    """Searched parameters (in sampling order), fixed settings, and the sampler and pruner with their arguments."""

    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    source: str = "default space"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (stored with the study, so a continued study can be checked against it)."""
        return {"params": [dataclasses.asdict(p) | {"choices": list(p.choices)} for p in self.params],
                "fixed": dict(self.fixed)}


def read_space(path: str | Path | None, base: TrainConfig) -> SearchSpace:
    """The search space from a YAML file (None: the default space), checked against the fixed settings `base`."""
    if path is None:
        return parse_space(yaml.safe_load(DEFAULT_SPACE_YAML), base, "default space")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such search-space file; check the --space path, or leave --space out to "
                          "use the default space")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_space(data, base, str(path))


def parse_space(data: Any, base: TrainConfig, where: str) -> SearchSpace:
    """Check a parsed space mapping (see the module docstring) and build the SearchSpace."""
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
        raise ConfigError(f"{where}: expected a mapping with a non-empty 'params:' mapping of setting: range or "
                          "choices (see 'chestxray tune --help' for the format)")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: unknown section {key!r}{closest(str(key), TOP_KEYS)}; "
                              f"valid sections: {', '.join(TOP_KEYS)}")
    params, fixed = [], {}
    for raw_name, spec in data["params"].items():
        name = str(raw_name).replace("-", "_")
        if name not in TUNABLE:
            hint = closest(name, TUNABLE)
            kind = "is fixed per study (set it in --config)" if name in FIELDS else "is not a setting"
            raise ConfigError(f"{where}: unknown parameter {name!r}{hint}: it {kind}; searchable parameters: "
                              f"{', '.join(TUNABLE)}")
        if isinstance(spec, list):
            params.append(_choices(name, spec, where))
        elif isinstance(spec, dict):
            params.append(_range(name, spec, where))
        else:
            fixed[name] = spec
    _check_fixed(fixed, base, where)
    ordered = tuple(sorted(params, key=lambda p: p.name in CONDITIONS or p.name == "dropout"))
    space = SearchSpace(ordered, fixed, _section(data, "sampler", SAMPLERS, "tpe", where),
                        _section(data, "pruner", PRUNERS, "median", where), where)
    _check_values(space, base)
    make_sampler(space, seed=0)
    make_pruner(space, max_resource=max(1, base.epochs))
    return space


def _choices(name: str, values: list[Any], where: str) -> Param:
    if not values:
        raise ConfigError(f"{where}: params.{name}: empty list of choices; give at least one value")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: params.{name}: a choice is listed twice ({values})")
    return Param(name, choices=tuple(values))


def _range(name: str, spec: dict[str, Any], where: str) -> Param:
    at = f"{where}: params.{name}"
    for key in spec:
        if key not in RANGE_KEYS:
            raise ConfigError(f"{at}: unknown key {key!r}{closest(str(key), RANGE_KEYS)}; a range takes "
                              f"{', '.join(RANGE_KEYS)} (or write a list of choices)")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{at}: a range needs both low and high, got {spec}")
    kind = str(FIELDS[name].type)
    is_int = kind.startswith("int")
    if not (kind.startswith(("int", "float"))):
        raise ConfigError(f"{at}: {name} is not numeric; give a list of choices instead of a range")
    low, high, log_scale, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    for label, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        ok = isinstance(value, int) if is_int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value):
            raise ConfigError(f"{at}: {label} = {value!r} is not {'an integer' if is_int else 'a number'}")
    if low >= high:
        raise ConfigError(f"{at}: empty range (low {low} is not below high {high}); give low < high, or a single "
                          "value to fix the setting")
    if log_scale and low <= 0:
        raise ConfigError(f"{at}: a log range must stay above 0, but low is {low}; give a positive low "
                          f"(e.g. {high / 1000:g}) or drop 'log: true'")
    if log_scale and step is not None:
        raise ConfigError(f"{at}: 'log' and 'step' cannot be combined (Optuna samples a log range continuously)")
    if step is not None and step <= 0:
        raise ConfigError(f"{at}: step must be positive, got {step}")
    cast = int if is_int else float
    return Param(name, low=cast(low), high=cast(high), log=log_scale, step=None if step is None else cast(step))


def _section(data: dict[str, Any], key: str, names: tuple[str, ...], default: str, where: str) -> dict[str, Any]:
    section = data.get(key) or {"name": default}
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping like {{name: {default}}}, got {section!r}")
    section = {"name": default, **section}
    if section["name"] not in names:
        raise ConfigError(f"{where}: {key}: unknown name {section['name']!r}{closest(str(section['name']), names)}; "
                          f"choose one of {', '.join(names)}")
    return section


def _check_fixed(fixed: dict[str, Any], base: TrainConfig, where: str) -> None:
    try:
        resolve_config(base.to_dict(), fixed, where=where)
    except ChestXrayError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _check_values(space: SearchSpace, base: TrainConfig) -> None:
    """Each choice and range end must pass TrainConfig validation together with the fixed settings."""
    settings = {**base.to_dict(), **space.fixed}
    models = next((list(p.choices) for p in space.params if p.name == "model"), [settings["model"]])
    for param in space.params:
        extra: dict[str, Any] = {}
        if param.name in CONDITIONS:
            extra = dict([CONDITIONS[param.name]])
        if param.name == "dropout":
            usable = [m for m in models if _model_has_dropout(m)]
            if not usable:
                log.warning("%s: dropout is never sampled: none of the models %s has a dropout layer",
                            space.source, models)
                continue
            extra["model"] = usable[0]
        for value in param.choices or (param.low, param.high):
            try:
                resolve_config(settings, extra, {param.name: value}, where=space.source)
            except ChestXrayError as exc:
                raise type(exc)(f"{space.source}: params.{param.name} = {value!r}: {exc}") from None


def _model_has_dropout(name: str) -> bool:
    try:
        return has_dropout(name)
    except ChestXrayError:
        return False  # an unknown model name is reported by the model parameter's own check


def suggest(trial: Any, space: SearchSpace, base: TrainConfig) -> dict[str, Any]:
    """Sample one trial's settings (fixed ones included) from the space with the Optuna `trial`."""
    settings = dict(space.fixed)
    current = {**base.to_dict(), **settings}
    for param in space.params:
        if param.name in CONDITIONS:
            setting, needed = CONDITIONS[param.name]
            if current[setting] != needed:
                continue
        if param.name == "dropout" and not _model_has_dropout(current["model"]):
            continue
        if param.choices:
            value = trial.suggest_categorical(param.name, list(param.choices))
        elif param.kind == "int":
            value = trial.suggest_int(param.name, param.low, param.high, step=param.step or 1, log=param.log)
        else:
            value = trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)
        settings[param.name] = current[param.name] = value
    return settings


def _optuna_call(cls: type, kwargs: dict[str, Any], what: str) -> Any:
    """cls(**kwargs), with unknown arguments reported as a ConfigError listing the accepted ones."""
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"{what}: unknown argument {key!r}{closest(key, accepted)}; "
                              f"{cls.__name__} takes {', '.join(accepted)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {exc}") from None


def make_sampler(space: SearchSpace, seed: int | None, sampler: str | None = None) -> Any:
    """The Optuna sampler: TPE (constant liar on, for parallel workers) or random, seeded."""
    import optuna

    name = sampler or space.sampler["name"]
    kwargs = {k: v for k, v in space.sampler.items() if k != "name" and name == space.sampler["name"]}
    if name == "random":
        return _optuna_call(optuna.samplers.RandomSampler, {"seed": seed, **kwargs}, f"{space.source}: sampler")
    return _optuna_call(optuna.samplers.TPESampler, {"seed": seed, "constant_liar": True, **kwargs},
                        f"{space.source}: sampler")


def make_pruner(space: SearchSpace, max_resource: int, pruner: str | None = None) -> Any:
    """The Optuna pruner on validation AUROC per epoch: median, Hyperband (epochs as the resource) or none."""
    import optuna

    name = pruner or space.pruner["name"]
    kwargs = {k: v for k, v in space.pruner.items() if k != "name" and name == space.pruner["name"]}
    what = f"{space.source}: pruner"
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return _optuna_call(optuna.pruners.HyperbandPruner, {"min_resource": 1, "max_resource": max_resource,
                                                              **kwargs}, what)
    return _optuna_call(optuna.pruners.MedianPruner, kwargs, what)
