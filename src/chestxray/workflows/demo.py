"""The whole chain on the bundled samples: catalog → split → prepare → train → evaluate → explain → report.

Runs the Kaggle pneumonia sample (binary) and the NIH ChestX-ray14 sample (14 findings) when they are found
(see chestxray.data.samples), or a clearly labelled synthetic collection when asked. Every figure comes from the run.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chestxray.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Defaults sized so both tasks finish in a few minutes on a 2-core CPU."""

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

            folder = make_synthetic(work / "synthetic-data", n=400, size=64, seed=seed)
            return _catalog_nih(Path(folder), seed)

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
             settings: DemoSettings, mlflow_uri: str) -> DemoOutcome:
    """Run one task through every stage into work/name and return its outcome."""
    from chestxray.data.catalog import save_catalog
    from chestxray.data.prepare import prepare_dataset
    from chestxray.evaluation.evaluate import evaluate_run
    from chestxray.report.run_report import write_report
    from chestxray.training.config import TrainConfig
    from chestxray.training.train import train

    start = time.perf_counter()
    folder = work / name
    catalog = build_catalog()
    catalog_dir = save_catalog(catalog, folder / "catalog")
    log.info("%s: catalog of %d images written", name, len(catalog.table))
    prepared = prepare_dataset(catalog_dir, folder / "prepared", size=settings.size, workers=settings.workers)
    run_dir = folder / f"run-{settings.model}"
    config = TrainConfig(
        prepared=str(prepared.out_dir), model=settings.model, epochs=settings.epochs,
        batch_size=settings.batch_size, lr=settings.lr, augment=settings.augment, seed=settings.seed,
        out=str(run_dir), mlflow=settings.mlflow, mlflow_uri=mlflow_uri, experiment=f"demo-{name}", num_workers=0,
        pos_weight=len(catalog.labels) > 1,  # rare findings: weight positives by neg/pos, as CheXNet's weighted BCE
    )
    shutil.rmtree(run_dir, ignore_errors=True)  # each demo trains afresh; catalog and shards are reused
    result = train(config)
    evaluation = evaluate_run(result.run_dir, split="test", n_boot=settings.n_boot, seed=settings.seed)
    _explain(result.run_dir, evaluation.eval_dir)
    report = write_report(result.run_dir)
    macro = next((r for r in evaluation.summary.rows if r.kind == "macro"), evaluation.summary.rows[0])
    extra: dict[str, float] = {}
    first = evaluation.summary.rows[0]
    if len(catalog.labels) == 1 and first.counts is not None:  # binary: the operating point, as clinicians read it
        c = first.counts
        extra = {"threshold": round(first.threshold or 0.0, 3), "sensitivity": c.sensitivity,
                 "specificity": c.specificity, "false negatives": c.fn, "false positives": c.fp}
    return DemoOutcome(
        name=name, description=description, run_dir=result.run_dir, report=report,
        counts=dict(prepared.counts), labels=list(catalog.labels),
        auroc=macro.auroc.value, auroc_low=macro.auroc.low, auroc_high=macro.auroc.high, extra=extra,
        seconds=time.perf_counter() - start, synthetic=synthetic,
    )


def _explain(run_dir: Path, eval_dir: Path, n: int = 4) -> None:
    """Grad-CAM overlays of test true positives, false positives and false negatives for the report (illustrations)."""
    import pandas as pd

    from chestxray.explain.explanations import explain_split
    from chestxray.models.bundle import load_bundle

    bundle = load_bundle(run_dir / "bundle")
    scores = pd.read_csv(eval_dir / "predictions.csv", dtype={"image_id": str, "patient_id": str})
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
    outcomes = []
    for name, description, build, is_synth in demo_tasks(root, synthetic, work, settings.seed):
        if on_task:
            on_task(name, description)
        outcomes.append(run_task(name, description, build, is_synth, work, settings, mlflow_uri))
    return outcomes
