"""A study: every combination of a grid of training settings, over seeds, as normal run folders, each evaluated on
the test split with thresholds from validation; a table per group (a combination without the seed), one run per
group selected on VALIDATION only, and paired comparisons of the selected runs on the test split.

Layout of DIR: study.json (grid, selection rule, MLflow parent run), runs/<name>/ (normal run folders, each with
eval/ and study_row.json once finished), study_runs.csv, study_groups.csv, study_comparisons.csv (one row per
pair of groups), study_comparisons_findings.csv (every finding of every pair), study.html.
A re-run skips runs whose study_row.json exists and resumes a run that stopped after a checkpoint, so a killed
study continues where it stopped. Recipes (scratch, frozen, finetune) are chestxray.training.recipes' presets, the
same settings `train --recipe` applies (defaults ← recipe ← the run's grid settings).

A grid is a cross product of its lists; `combinations:` (a list of settings dicts) pairs settings instead, each
combination crossed with the other lists (e.g. seeds):
    combinations: [{recipe: scratch, model: cnn-small}, {recipe: finetune, model: efficientnet-lite0}]
    seeds: [0, 1, 2]
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chestxray.data.labels import closest
from chestxray.errors import ConfigError
from chestxray.files import write_csv, write_json
from chestxray.training.config import FIELDS, TrainConfig, read_settings_file, resolve_config
from chestxray.training.recipes import RECIPES, recipe_settings

log = logging.getLogger(__name__)

COMBINATIONS = "combinations"
ALIASES = {"models": "model", "seeds": "seed", "recipes": "recipe"}
SELECT = ("val_auroc", "val_loss")
MAX_RUNS = 200
DONE = "study_row.json"


@dataclass(frozen=True)
class StudyRun:
    """One combination: its name (folder), group (the combination without the seed) and training config."""

    name: str
    group: str
    seed: int
    settings: dict[str, Any]
    config: TrainConfig
    fold: int | None = None  # k-fold: the fold this run is tested on (chestxray.workflows.crossval)


@dataclass
class Study:
    """A validated grid expanded into runs, with where it lives and how one run per group is selected."""

    out: Path
    grid: dict[str, list[Any]]
    runs: list[StudyRun]
    select: str = "val_auroc"
    n_boot: int = 1000
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    prepared: str = ""
    folds: int = 0  # k-fold cross-validation by patient when >= 2 (chestxray.workflows.crossval)
    fold_seed: int = 0


def read_grid(path: str | Path) -> dict[str, Any]:
    """A grid from YAML: setting -> value or list of values (keys may use -)."""
    return read_settings_file(path, "--grid")


def normalise_grid(raw: dict[str, Any], where: str = "grid") -> dict[str, list[Any]]:
    """Aliases resolved (models -> model ...), scalars made one-element lists, `combinations` checked entry by entry;
    unknown names, empty lists and unknown recipes raise ConfigError naming the closest valid name."""
    grid: dict[str, list[Any]] = {}
    for key, value in raw.items():
        if key == COMBINATIONS:
            continue
        name = _setting_name(key, where)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"{where}: {key!r} is an empty list; give at least one value or leave it out")
        grid[name] = values
    if COMBINATIONS in raw:
        grid[COMBINATIONS] = _combinations(raw[COMBINATIONS], set(grid), where)
    recipes = [*grid.get("recipe", []), *(c["recipe"] for c in grid.get(COMBINATIONS, []) if "recipe" in c)]
    for recipe in recipes:
        if recipe not in RECIPES:
            raise ConfigError(f"{where}: unknown recipe {recipe!r}{closest(str(recipe), list(RECIPES))}; "
                              f"recipes: {', '.join(RECIPES)}")
    grid.setdefault("seed", [0])
    return grid


def _setting_name(key: str, where: str) -> str:
    """A grid key as a setting name (aliases resolved); unknown or study-owned names raise ConfigError."""
    valid = [*FIELDS, "recipe", *ALIASES, COMBINATIONS]
    if key not in valid:
        raise ConfigError(f"{where}: unknown setting {key!r}{closest(key, valid)}; valid: models, recipes, "
                          f"seeds, combinations or any train setting ({', '.join(FIELDS)})")
    if key in ("prepared", "out"):
        raise ConfigError(f"{where}: {key!r} is set by the study (PREPARED argument, --out), not by the grid")
    return ALIASES.get(key, key)


def _combinations(value: Any, listed: set[str], where: str) -> list[dict[str, Any]]:
    """`combinations:` as a non-empty list of distinct settings dicts, one value per setting, no seed and no
    setting that the grid also lists (a combination is crossed with those lists)."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: 'combinations' must be a non-empty list of settings, e.g. "
                          "[{recipe: scratch, model: cnn-small}, {recipe: frozen, model: efficientnet-lite0}]")
    combos: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not item:
            raise ConfigError(f"{where}: combinations[{i}] is {item!r}; each combination is a non-empty mapping "
                              "setting: value, e.g. {recipe: frozen, model: efficientnet-lite0}")
        combo: dict[str, Any] = {}
        for key, v in item.items():
            name = _setting_name(str(key).replace("-", "_"), f"{where}: combinations[{i}]")
            if name == COMBINATIONS or name == "seed":
                raise ConfigError(f"{where}: combinations[{i}] sets {key!r}; give seeds once, beside "
                                  "'combinations' (every combination is trained with every seed)")
            if isinstance(v, (list, dict)):
                raise ConfigError(f"{where}: combinations[{i}].{key} is {v!r}; a combination gives one value per "
                                  "setting (list values beside 'combinations' to cross them)")
            if name in listed:
                raise ConfigError(f"{where}: {key!r} is both a list of the grid and in combinations[{i}]; put it "
                                  "in one place")
            combo[name] = v
        if combo in combos:
            raise ConfigError(f"{where}: combinations[{i}] repeats combinations[{combos.index(combo)}]")
        combos.append(combo)
    return combos


def _check_recipe(recipe: str, model: str) -> None:
    """A recipe that needs pretrained weights must get a model that has them (a downloadable file: in the cache)."""
    if not RECIPES[recipe].get("pretrained"):
        return
    from chestxray.models.registry import get_spec
    from chestxray.models.weights import imagenet_weights_path

    spec = get_spec(model)
    if not spec.has_imagenet:
        raise ConfigError(f"recipe {recipe!r} needs pretrained weights, but model {model!r} has none (it can only be "
                          f"trained from scratch); use recipe 'scratch' for it or a model with ImageNet weights")
    if spec.imagenet_loader is not None:  # weights from a package or timm's hub: the loader reports what is missing
        return
    path = imagenet_weights_path(model)
    if not path.is_file():
        raise ConfigError(f"recipe {recipe!r} needs the ImageNet weights of {model!r}, which are not in the local "
                          f"cache ({path}); fetch them with `chestxray weights fetch {model}` or use recipe 'scratch'")


def _slug(value: Any) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(value))


def grid_settings(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every run's settings: each combination (or none) crossed with the product of the grid's lists."""
    keys = [k for k in grid if k != COMBINATIONS]
    product = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    return [{**combo, **rest} for combo in grid.get(COMBINATIONS, [{}]) for rest in product]


def _group_keys(grid: dict[str, list[Any]]) -> list[str]:
    """The settings that tell groups apart: those varying across combinations, then lists of more than one value
    (the seed never); with nothing varying, the first setting."""
    combos = grid.get(COMBINATIONS, [])
    combo_keys = list(dict.fromkeys(k for c in combos for k in c))
    varied = [k for k in combo_keys if len({repr(c.get(k)) for c in combos}) > 1]
    varied += [k for k in grid if k not in (COMBINATIONS, "seed") and len(grid[k]) > 1]
    return varied or [k for k in [*combo_keys, *grid] if k not in (COMBINATIONS, "seed")][:1]


def expand(prepared: str | Path, grid: dict[str, list[Any]], out: str | Path, base: dict[str, Any] | None = None,
           yes: bool = False, select: str = "val_auroc", n_boot: int = 1000) -> Study:
    """Every combination of the grid as a validated run (names, groups, configs) before anything trains."""
    if select not in SELECT:
        raise ConfigError(f"--select {select!r} is not one of {list(SELECT)}{closest(select, list(SELECT))}")
    combos = grid_settings(grid)
    if len(combos) > MAX_RUNS and not yes:
        raise ConfigError(f"the grid makes {len(combos)} runs (more than {MAX_RUNS}); check it, or pass --yes to "
                          "train them all")
    group_keys = _group_keys(grid)
    runs, out = [], Path(out)
    for settings in combos:
        seed = int(settings["seed"])
        recipe = settings.get("recipe")
        train_settings = {k: v for k, v in settings.items() if k != "recipe"}
        if recipe is not None:
            _check_recipe(recipe, str(settings.get("model", (base or {}).get("model", TrainConfig.model))))
        shown = [k for k in group_keys if k in settings]
        group = ",".join(f"{k}={settings[k]}" for k in shown) or "all"
        name = "_".join(_slug(settings[k]) for k in shown) + f"_seed{seed}" if shown else f"seed{seed}"
        config = resolve_config(base or {}, recipe_settings(recipe), {**train_settings, "prepared": str(prepared),
                                "out": str(out / "runs" / name)}, where="study grid")
        runs.append(StudyRun(name, group, seed, settings, config))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two grid combinations map to the same run name; give distinct values")
    return Study(out, grid, runs, select, n_boot, prepared=str(prepared))


def run_one(run: StudyRun, n_boot: int = 1000) -> dict[str, Any]:
    """Train (or resume) one run, evaluate it on test with thresholds from val, write and return its row."""
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.training.train import train

    folder = Path(run.config.out)
    if (folder / DONE).is_file():
        return json.loads((folder / DONE).read_text(encoding="utf-8"))
    resume = (folder / "checkpoints" / "last.ckpt").is_file() and not (folder / "bundle").is_dir()
    started = time.time()
    if not (folder / "bundle").is_dir():  # a run trained before the study stopped is only evaluated
        log.info("study: training %s%s", run.name, " (resuming)" if resume else "")
        train(run.config, resume=resume)
    evaluation = evaluate_run(folder, split="test", n_boot=n_boot, seed=run.seed)
    row = {**run_row(run, folder, evaluation.summary), "started_at": started, "finished_at": time.time()}
    if evaluation.by_source:  # a merged dataset: each test source alone, for the cross-dataset matrix
        from chestxray.workflows.cross_source import source_records

        row["by_source"] = source_records(evaluation.by_source, evaluation.summary)
    write_json(folder / DONE, row)
    return row


def run_row(run: StudyRun, folder: Path, summary: Any) -> dict[str, Any]:
    """One row of study_runs.csv: validation numbers, training time (validation excluded) and images/s from
    history.csv, parameters from the bundle, test numbers from the evaluation."""
    from chestxray.models.bundle import load_bundle

    history = pd.read_csv(folder / "history.csv")
    seconds = history["train_seconds"].sum()
    images_per_s = history["train_images"].sum() / seconds if seconds > 0 else None
    parameters = sum(p.numel() for p in load_bundle(folder / "bundle").net.parameters())
    head = summary.rows[0] if len(summary.rows) == 1 else summary.row("macro")
    return {
        "run": run.name, "group": run.group, "seed": run.seed, **({"fold": run.fold} if run.fold is not None else {}),
        **{f"setting_{k}": v for k, v in run.settings.items()},
        "val_auroc": _num(history["val_auroc"].max()), "val_loss": _num(history["val_loss"].min()),
        "test_auroc": head.auroc.value, "test_auroc_low": head.auroc.low, "test_auroc_high": head.auroc.high,
        "test_auroc_note": head.auroc.reason if head.auroc.low is None else "",
        **operating_point(summary),
        "train_seconds": _num(seconds), "parameters": parameters, "images_per_s": _num(images_per_s),
        "epochs": int(history["epoch"].max()) + 1 if len(history) else 0, "run_dir": str(folder),
    }


def operating_point(summary: Any) -> dict[str, Any]:
    """Sensitivity, specificity, FN and FP at the validation-chosen thresholds: the binary row, the micro row of a
    multi-label task, or for a multi-class task (no micro row) the mean sensitivity/specificity over the classes'
    one-vs-rest argmax counts and their summed FN/FP (each misclassified image is one FN and one FP)."""
    names = [r.name for r in summary.rows]
    if len(summary.rows) == 1 or "micro" in names:
        c = (summary.rows[0] if len(summary.rows) == 1 else summary.row("micro")).counts
        return {"sensitivity": c.sensitivity if c else None, "specificity": c.specificity if c else None,
                "fn": c.fn if c else None, "fp": c.fp if c else None}
    counts = [r.counts for r in summary.rows if r.kind == "finding" and r.counts is not None]
    if not counts:
        return {"sensitivity": None, "specificity": None, "fn": None, "fp": None}
    sens = [c.sensitivity for c in counts if c.sensitivity is not None]
    spec = [c.specificity for c in counts if c.specificity is not None]
    return {"sensitivity": sum(sens) / len(sens) if sens else None, "specificity": sum(spec) / len(spec) if spec
            else None, "fn": sum(c.fn for c in counts), "fp": sum(c.fp for c in counts)}


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def select_runs(runs: pd.DataFrame, rule: str = "val_auroc") -> pd.DataFrame:
    """One run per group chosen on validation only: highest val_auroc or lowest val_loss (ties: lowest seed)."""
    if rule not in SELECT:
        raise ConfigError(f"selection rule {rule!r} is not one of {list(SELECT)}")
    ascending = rule == "val_loss"
    ordered = runs.sort_values([rule, "seed"], ascending=[ascending, True], na_position="last", kind="stable")
    return ordered.groupby("group", sort=False).head(1).set_index("group").loc[list(dict.fromkeys(runs["group"]))]


def group_table(runs: pd.DataFrame, rule: str = "val_auroc") -> pd.DataFrame:
    """Per group: mean ± sd over seeds (val/test AUROC, time, images/s), the selected run with its test CI and
    operating point (sensitivity/specificity/FN/FP at the validation-chosen thresholds)."""
    chosen = select_runs(runs, rule)
    rows = []
    for group, part in runs.groupby("group", sort=False):
        pick = chosen.loc[group]
        rows.append({
            "group": group, "runs": len(part),
            "val_auroc_mean": part["val_auroc"].mean(), "val_auroc_sd": part["val_auroc"].std(ddof=1),
            "test_auroc_mean": part["test_auroc"].mean(), "test_auroc_sd": part["test_auroc"].std(ddof=1),
            "selected_run": pick["run"], "selected_by": rule, "selected_val": pick[rule],
            "selected_test_auroc": pick["test_auroc"], "selected_test_low": pick["test_auroc_low"],
            "selected_test_high": pick["test_auroc_high"], "selected_test_note": pick.get("test_auroc_note", ""),
            "sensitivity": pick["sensitivity"],
            "specificity": pick["specificity"], "fn": pick["fn"], "fp": pick["fp"],
            "train_seconds_mean": part["train_seconds"].mean(), "parameters": pick["parameters"],
            "images_per_s_mean": part["images_per_s"].mean(),
        })
    return pd.DataFrame(rows)


def compare_groups(chosen: pd.DataFrame, n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired test-split comparisons of the selected runs (every pair for up to 6 groups, else each vs the first):
    one headline row per pair, and every finding's row (Obuchowski's clustered test, bootstrap CI) per pair.

    Multiplicity is corrected twice, and each column says over which family: `p_holm` of a finding row is Holm over
    the findings tested in its pair (as compare-runs prints it); `p_holm_study` is Holm over every finding tested
    in every pair of the study; the headline's `p_holm_pairs` is Holm over the pairs' headline tests."""
    from chestxray.evaluation.compare_runs import compare_runs, p_text
    from chestxray.evaluation.metrics import MACRO_ELIGIBLE
    from chestxray.evaluation.statistics import holm

    groups = list(chosen.index)
    pairs = list(itertools.combinations(groups, 2)) if len(groups) <= 6 else [(groups[0], g) for g in groups[1:]]
    rows, details = [], []
    for a, b in pairs:
        cmp = compare_runs(chosen.loc[a, "run_dir"], chosen.loc[b, "run_dir"], n_boot=n_boot, names=(a, b))
        details.append(cmp.table.assign(a=a, b=b))
        finding = cmp.headline_row()
        r = cmp.table.set_index("finding").loc[finding]
        rows.append({"a": a, "b": b, "run_a": chosen.loc[a, "run"], "run_b": chosen.loc[b, "run"],
                     "finding": finding, "diff": r["diff"], "low": r["low"], "high": r["high"], "p": r["p"],
                     "test": r["test"], "sentence": cmp.headline(), "method": cmp.method})
    table = pd.DataFrame(rows)
    per_finding = pd.concat(details, ignore_index=True) if details else pd.DataFrame()
    if table.empty:
        return table, per_finding
    table["p_holm_pairs"] = holm([None if pd.isna(p) else float(p) for p in table["p"]])
    tested = sum(pd.notna(table["p"]))
    table["family"] = f"Holm over the {tested} pairwise headline tests of this study"
    table["sentence"] = [s + (f", Holm-adjusted over {tested} pairs {p_text(ph)}" if pd.notna(ph) and tested > 1
                              else "") for s, ph in zip(table["sentence"], table["p_holm_pairs"])]
    is_finding = ~per_finding["finding"].isin(["macro", MACRO_ELIGIBLE])
    p_all = [float(p) if f and pd.notna(p) else None for f, p in zip(is_finding, per_finding["p"])]
    per_finding["p_holm_study"] = holm(p_all)
    n_all = sum(p is not None for p in p_all)
    per_finding["family"] = [f"p_holm: the findings tested in this pair; p_holm_study: all {n_all} findings tested "
                             "in the study's pairs" if f else "macro rows: not in the findings' families"
                             for f in is_finding]
    significant = per_finding[is_finding & (per_finding["p_holm_study"] < 0.05)]
    table["findings_p_holm_study_below_0.05"] = [int(((significant["a"] == a) & (significant["b"] == b)).sum())
                                                 for a, b in zip(table["a"], table["b"])]
    return table, per_finding


def _limit_threads(threads: int) -> None:
    """A parallel worker's torch threads, so that max_parallel runs share the cores instead of oversubscribing."""
    import torch

    torch.set_num_threads(threads)


def run_study(study: Study, max_parallel: int = 1, only: int | None = None,
              on_run: Callable[[dict[str, Any]], None] | None = None, threads: int | None = None) -> Study:
    """Train and evaluate every run not finished yet (in up to max_parallel processes), then write the tables.

    only=i trains run i alone (one SLURM array task) and writes no tables. Each parallel worker uses `threads` torch
    threads (default: the CPU cores divided among the workers).
    """
    study.out.mkdir(parents=True, exist_ok=True)
    if study.folds:
        from chestxray.workflows.crossval import make_study_folds

        make_study_folds(study)
    parent = _mlflow_parent(study)
    write_json(study.out / "study.json", {"grid": study.grid, "select": study.select, "runs": len(study.runs),
                                          "run_names": [r.name for r in study.runs], "mlflow_parent_run_id": parent,
                                          **({"folds": study.folds, "fold_seed": study.fold_seed} if study.folds
                                             else {})})
    todo = study.runs if only is None else [study.runs[_index(only, len(study.runs))]]
    pending = [r for r in todo if not (Path(r.config.out) / DONE).is_file()]
    log.info("study %s: %d runs, %d to do", study.out, len(study.runs), len(pending))
    rows = []
    if max_parallel > 1 and len(pending) > 1:
        import multiprocessing

        per_run = threads or max(1, (os.cpu_count() or 1) // max_parallel)
        with ProcessPoolExecutor(max_parallel, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_limit_threads, initargs=(per_run,)) as pool:
            for row in pool.map(run_one, pending, [study.n_boot] * len(pending)):
                rows.append(row)
                if on_run:
                    on_run(row)
    else:
        for run in pending:
            rows.append(run_one(run, study.n_boot))
            if on_run:
                on_run(rows[-1])
    _mlflow_children(study, parent)
    if only is not None:
        return study
    finished = [run_one(r, study.n_boot) for r in study.runs]  # finished: read back, no training
    study.results = pd.DataFrame([{k: v for k, v in row.items() if k != "by_source"} for row in finished])
    write_csv(study.out / "study_runs.csv", study.results)
    if study.folds:
        from chestxray.workflows.crossval import crossval_groups

        groups, chosen = crossval_groups(study, study.results)
    else:
        groups, chosen = group_table(study.results, study.select), select_runs(study.results, study.select)
    write_csv(study.out / "study_groups.csv", groups)
    comparisons, per_finding = compare_groups(chosen, study.n_boot) if len(chosen) > 1 else (pd.DataFrame(),) * 2
    write_csv(study.out / "study_comparisons.csv", comparisons)
    write_csv(study.out / "study_comparisons_findings.csv", per_finding)
    if not study.folds:  # k-fold pools every source's patients in one estimate: no train x test source matrix
        from chestxray.workflows.cross_source import write_cross_source

        write_cross_source(study.out, finished, list(chosen["run"]))
    from chestxray.report.study_report import write_study_report

    write_study_report(study.out, study.results, groups, chosen, comparisons, study.select, folds=study.folds)
    return study


def _index(only: int, n: int) -> int:
    if not 0 <= only < n:
        raise ConfigError(f"--only {only}: the study has runs 0..{n - 1}")
    return only


def _mlflow_parent(study: Study) -> str | None:
    """The study's MLflow parent run (created once, its id kept in study.json); None when MLflow is off."""
    config = study.runs[0].config
    if not config.mlflow:
        return None
    known = study.out / "study.json"
    if known.is_file():
        previous = json.loads(known.read_text(encoding="utf-8")).get("mlflow_parent_run_id")
        if previous:
            return previous
    from mlflow.tracking import MlflowClient

    from chestxray.training.train import _allow_file_store, _tracking_uri, ensure_experiment

    uri = _tracking_uri(config)
    with _allow_file_store(uri):
        client = MlflowClient(uri)
        exp_id = ensure_experiment(client, config.experiment, uri)  # artifacts beside the store, not in ./mlruns
        run = client.create_run(exp_id, run_name=f"study {study.out.name}",
                                tags={"chestxray.study": str(study.out.resolve())})
        client.log_param(run.info.run_id, "select", study.select)
        client.log_dict(run.info.run_id, {k: [str(v) for v in vs] for k, vs in study.grid.items()}, "grid.json")
    return run.info.run_id


def _mlflow_children(study: Study, parent: str | None) -> None:
    """Nest each finished run's MLflow run under the study's parent run (MLflow's mlflow.parentRunId tag)."""
    if parent is None:
        return
    from mlflow.tracking import MlflowClient

    from chestxray.training.train import _allow_file_store, _tracking_uri

    uri = _tracking_uri(study.runs[0].config)
    with _allow_file_store(uri):
        client = MlflowClient(uri)
        for run in study.runs:
            info = Path(run.config.out) / "run.json"
            if info.is_file():
                child = json.loads(info.read_text(encoding="utf-8")).get("mlflow_run_id")
                if child:
                    client.set_tag(child, "mlflow.parentRunId", parent)


def with_base(prepared: str | Path, grid: dict[str, list[Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Settings shared by every run (flags given once), checked like the grid's."""
    unknown = [k for k in base if k not in FIELDS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}{closest(unknown[0], list(FIELDS))}")
    return {k: v for k, v in base.items() if k not in grid}

