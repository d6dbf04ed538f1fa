"""`chestxray tune`: an Optuna study over TrainConfig settings, each trial a normal train() run, pruned on val AUROC.

OUT/ holds study.db (the default SQLite storage), trials/trial-NNNN/ (one run folder per trial), trials/mlflow.db
(the MLflow store of the parent run and every trial, artifacts in trials/artifacts), trials.csv, best.yaml (the
best trial's config: `chestxray train --config OUT/best.yaml` trains it again) and tune_report.html. The objective
is the run's best validation AUROC (macro over findings with both classes); the test split is never read.
Re-running the same command continues the study: finished trials are kept, a trial whose process died is marked
failed by Optuna's heartbeat (after `heartbeat` × 2 seconds), not counted, its folder moved to trials/failed/, and
run again once with the same parameters; the sampler is seeded by each trial's position among the live trials, so a
killed and continued study draws what an uninterrupted one draws. Any number of
processes may share one storage (`--workers N` here, or SLURM jobs against PostgreSQL): each starts a trial only
while complete + pruned + running trials are fewer than the requested count, counting and creating the trial under
the study's claim lock (workflows/tune_claim.py), so the study never holds a trial beyond the count.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from chestxray.errors import ChestXrayError, ConfigError
from chestxray.files import write_csv, write_text
from chestxray.training.config import TrainConfig, resolve_config
from chestxray.workflows.search_space import SearchSpace, make_pruner, make_sampler, suggest
from chestxray.workflows.tune_claim import check_claimable, run_claimed_trial
from chestxray.workflows.tune_storage import counts, fail_stale, open_storage, parent_run, redact, tag_run

log = logging.getLogger(__name__)

STUDY_DB = "study.db"
TRIALS_DIR = "trials"
BEST_YAML = "best.yaml"
REPORT = "tune_report.html"
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class TuneSettings:
    """One `chestxray tune` invocation: fixed settings, search space, trial count, storage and workers."""

    base: TrainConfig  # fixed settings of every trial (--config and PREPARED)
    space: SearchSpace
    out: str
    trials: int = 20  # complete + pruned trials the study should hold when done
    storage: str = ""  # "" → sqlite:///OUT/study.db
    study_name: str = ""  # "" → the name of the OUT folder
    workers: int = 1  # trial processes on this machine
    timeout: float = 0.0  # seconds after which no new trial starts (0: none)
    sampler: str | None = None  # tpe | random (None: the space's)
    pruner: str | None = None  # median | hyperband | none (None: the space's)
    heartbeat: int = 60  # seconds between a running trial's heartbeats; stale after twice that

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.out) / STUDY_DB).resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or Path(self.out).resolve().name


@dataclass
class TuneResult:
    """How the study stands after this invocation."""

    study_name: str
    storage: str  # with any password hidden
    complete: int
    pruned: int
    failed: int
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_yaml: Path | None
    report: Path | None
    seconds: float


def parse_duration(text: str | float | int | None) -> float:
    """Seconds from '90', '90s', '30m', '2h' or '1d' (None or '' → 0, no limit)."""
    if text is None or text == "":
        return 0.0
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise ConfigError(f"--timeout {text!r}: not a duration; write e.g. 45m, 2h or 3600 (seconds)")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2) or "s"]


def check_settings(settings: TuneSettings) -> None:
    """Cheap checks before anything runs: counts, and that the storage can be reached (it is created if new)."""
    if settings.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {settings.trials}")
    if settings.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {settings.workers}")
    if settings.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be at least 1 second, got {settings.heartbeat}")
    if settings.timeout < 0:
        raise ConfigError(f"--timeout must not be negative, got {settings.timeout}")
    if not settings.storage:
        Path(settings.out).mkdir(parents=True, exist_ok=True)
    check_claimable(settings.storage_url)
    open_storage(settings.storage_url, settings.heartbeat)


def tune(settings: TuneSettings) -> TuneResult:
    """Run (or continue) the study until it holds settings.trials complete + pruned trials, then summarise it."""
    import optuna

    start = time.perf_counter()
    check_settings(settings)
    out = Path(settings.out)
    if settings.base.mlflow and not settings.base.mlflow_uri:  # parent and trials in one store, beside the trials
        settings = replace(settings, base=replace(settings.base, mlflow_uri=mlflow_store(out)))
    (out / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage_url, settings.heartbeat)
    study = optuna.create_study(storage=storage, study_name=settings.name, direction="maximize",
                                load_if_exists=True)
    _check_same_space(study, settings)
    fail_stale(study)
    parent_id = parent_run(study, settings.base) if settings.base.mlflow else None
    if settings.workers == 1:
        run_worker(settings, 0, parent_id)
    else:
        _run_processes(settings, parent_id)
    study = optuna.load_study(study_name=settings.name, storage=storage)
    return summarise(study, settings, parent_id, time.perf_counter() - start)


def mlflow_store(out: str | Path) -> str:
    """A study's MLflow store: OUT/trials/mlflow.db (artifacts in OUT/trials/artifacts), the parent run and every
    trial's run together; `chestxray ui --store OUT` opens it."""
    return f"sqlite:///{(Path(out) / TRIALS_DIR).resolve() / 'mlflow.db'}"


def _check_same_space(study: Any, settings: TuneSettings) -> None:
    """Store the space with a new study; a continued study must be searched over the same space."""
    import json

    space = json.loads(json.dumps(settings.space.to_dict()))
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space)
        study.set_user_attr("space_source", settings.space.source)
        study.set_user_attr("prepared", settings.base.prepared)
    elif stored != space:
        raise ConfigError(f"study {settings.name!r} in {redact(settings.storage_url)} was started with another "
                          f"search space ({study.user_attrs.get('space_source', '?')}); continue it with that "
                          "space, or start a new study with --study-name NAME or another --out")


def _run_processes(settings: TuneSettings, parent_id: str | None) -> None:
    """settings.workers processes (spawned: each imports torch afresh) sharing the storage; wait for all."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    procs = [context.Process(target=_process_main, args=(settings, i, parent_id, level, list(warnings.filters)),
                             name=f"chestxray-tune-{i}") for i in range(settings.workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    failed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise ChestXrayError(f"{', '.join(failed)} stopped with an error (its message is above); the study "
                             f"keeps what finished: run the same command again to continue it")


def _process_main(settings: TuneSettings, index: int, parent_id: str | None, level: int,
                  filters: list[Any]) -> None:
    """Entry point of a spawned worker: the parent's log level and warning filters, then run_worker."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    warnings.filters[:] = filters
    import lightning  # noqa: F401  (sets its loggers at import; quiet them as the parent did)

    if level >= logging.WARNING:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        run_worker(settings, index, parent_id)
    except ChestXrayError as exc:  # a user-fixable problem: one line, like the CLI, and a non-zero exit code
        log.error("worker %d: %s", index, exc)
        raise SystemExit(1) from None


def run_worker(settings: TuneSettings, index: int, parent_id: str | None) -> int:
    """One process's share: start trials until the study holds enough; returns the number of trials it ran."""
    import optuna

    storage = open_storage(settings.storage_url, settings.heartbeat)
    study = optuna.load_study(study_name=settings.name, storage=storage)
    study.pruner = make_pruner(settings.space, settings.base.epochs, settings.pruner)
    deadline = time.monotonic() + settings.timeout if settings.timeout else math.inf
    ran = 0
    while time.monotonic() < deadline:
        finished, _ = counts(study)
        if finished >= settings.trials:
            break
        if run_claimed_trial(study, settings.trials, settings.storage_url,
                             lambda trial: _objective(trial, settings, parent_id),
                             prepare=lambda s, position: _before_trial(s, position, settings)):
            ran += 1
        else:  # the rest is running elsewhere (or is a dead trial going stale): look again shortly
            time.sleep(min(5.0, settings.heartbeat))
    return ran


def sampler_seed(seed: int, position: int) -> int:
    """The sampler's seed for the trial at `position` among the study's live trials (failed ones do not count)."""
    return (seed * 1_000_003 + position * 101) % 2**32


def _before_trial(study: Any, position: int, settings: TuneSettings) -> None:
    """Under the claim: retire killed trials' folders, and seed the sampler by the new trial's position, so a study
    killed and continued draws what an uninterrupted one draws (the killed trial itself is retried with its own
    parameters by the storage's stale-trial retry callback)."""
    retire_failed(study, Path(settings.out))
    study.sampler = make_sampler(settings.space, sampler_seed(settings.base.seed, position), settings.sampler)


def retire_failed(study: Any, out: Path) -> list[Path]:
    """Move the run folders of failed trials out of OUT/trials into OUT/trials/failed/ (with the reason in
    FAILED.txt and without the dead process's lock file), so OUT/trials holds only live and finished trials."""
    import fcntl

    from optuna.trial import TrialState

    from chestxray.locks import LOCK_FILE

    moved = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        folder = Path(trial.user_attrs.get("run_dir", ""))
        if not trial.user_attrs.get("run_dir") or folder.parent != (out / TRIALS_DIR).resolve() \
                or not folder.is_dir():
            continue
        lock = folder / LOCK_FILE
        if lock.exists():
            with open(lock, "rb") as fh:  # a live holder (a hung, not a dead, process) keeps its folder
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue
            lock.unlink()
        target = folder.parent / "failed" / folder.name
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
        retry = next((t.number for t in study.get_trials(deepcopy=False)
                      if t.system_attrs.get("failed_trial") == trial.number), None)
        write_text(target / "FAILED.txt", f"trial {trial.number} failed (its process died or raised); "
                                          + (f"retried as trial {retry}\n" if retry is not None else "not retried\n"))
        log.info("trial %d failed: its folder moved to %s", trial.number, target)
        moved.append(target)
    return moved


def _objective(trial: Any, settings: TuneSettings, parent_id: str | None) -> float:
    """Train one trial's config into OUT/trials/trial-NNNN; its best val AUROC is the value."""
    import optuna

    from chestxray.training.train import train
    from chestxray.training.tuning import MlflowParent, OptunaPruning

    params = suggest(trial, settings.space, settings.base)
    run_dir = Path(settings.out) / TRIALS_DIR / f"trial-{trial.number:04d}"
    progress = settings.base.progress and not sys.stdout.isatty()  # epoch lines in a log or a pipe, no bars
    config = resolve_config(settings.base.to_dict(), params, {"out": str(run_dir), "progress": progress},
                            where=f"trial {trial.number}")
    if config.devices == "auto":
        config = replace(config, devices=1)
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    pruning = OptunaPruning(trial)
    child = MlflowParent(parent_id or "", {"optuna.study": settings.name, "optuna.trial": str(trial.number)})
    result = train(config, callbacks=[pruning, child] if parent_id else [pruning])
    trial.set_user_attr("epochs", result.epochs)
    trial.set_user_attr("train_seconds", round(result.seconds, 2))
    if child.run_id is not None:
        tag_run(config, child.run_id, {"optuna.state": "PRUNED" if pruning.pruned_at is not None else "COMPLETE"})
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after validation {pruning.pruned_at} "
                                 f"(val AUROC {pruning.values[-1]:.4f})")
    return result.best_val_auroc


def summarise(study: Any, settings: TuneSettings, parent_id: str | None, seconds: float) -> TuneResult:
    """Write OUT/trials.csv, OUT/best.yaml and OUT/tune_report.html; tell MLflow's parent run the outcome."""
    from optuna.trial import TrialState

    from chestxray.report.tune_report import write_tune_report

    out = Path(settings.out)
    retire_failed(study, out)
    trials = study.get_trials(deepcopy=False)
    state_count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                   TrialState.FAIL)}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    write_csv(out / "trials.csv", study.trials_dataframe(), index=False)
    best_yaml = write_best_yaml(best, out / BEST_YAML, settings.name) if best is not None else None
    report = write_tune_report(study, out / REPORT, storage=redact(settings.storage_url))
    if parent_id is not None:
        from chestxray.workflows.tune_storage import finish_parent

        finish_parent(parent_id, settings.base, {
            "best_val_auroc": best.value if best else math.nan, "trials_complete": state_count[TrialState.COMPLETE],
            "trials_pruned": state_count[TrialState.PRUNED], "trials_failed": state_count[TrialState.FAIL]},
            [p for p in (best_yaml, report, out / "trials.csv") if p is not None])
    return TuneResult(study_name=settings.name, storage=redact(settings.storage_url),
                      complete=state_count[TrialState.COMPLETE], pruned=state_count[TrialState.PRUNED],
                      failed=state_count[TrialState.FAIL], best_number=best.number if best else None,
                      best_value=best.value if best else None, best_params=dict(best.params) if best else {},
                      best_yaml=best_yaml, report=report, seconds=seconds)


def write_best_yaml(best: Any, path: Path, study_name: str) -> Path:
    """The best trial's resolved config without its run folder, so `chestxray train --config` trains it again."""
    run_dir = Path(best.user_attrs["run_dir"])
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    for key in ("out", "progress"):
        config.pop(key, None)
    if config.get("mlflow_uri") == mlflow_store(path.parent):  # the study's own store: a retrain logs beside itself
        config.pop("mlflow_uri")
    header = (f"# best trial {best.number} of study {study_name!r}: val AUROC {best.value:.6f} (run {run_dir})\n"
              f"# train it again with: chestxray train --config {path} --out runs/best\n")
    return write_text(path, header + yaml.safe_dump(config, sort_keys=False))


def best_config(path: str | Path) -> TrainConfig:
    """The TrainConfig a best.yaml describes (what `chestxray train --config best.yaml` resolves)."""
    return resolve_config(Path(path), where=str(path))
