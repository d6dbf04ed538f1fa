"""chestxray: chest X-ray classifiers from raw files to a deployable, explained model.

The main entry points are importable from here (loaded on first use, so `import chestxray` stays fast):
read_nih / read_folder / read_csv_table / read_chexpert (merge_catalogs + read_label_map: several sources, one
label vocabulary) → assign_splits → save_catalog → prepare_dataset → TrainConfig + train
→ evaluate_run (evaluate_external: data the run never saw) → explain_images → write_report; load_bundle + predict_images for new images (open_scorer: the
one scoring path, for a bundle or an .onnx file; its site= takes a profile made by calibrate_site); read_grid + expand + run_study and compare_runs for studies;
read_space + TuneSettings + tune for a search; run_demo for all.
"""

from __future__ import annotations

import importlib
from typing import Any

from chestxray.openmp import set_default_wait

set_default_wait()  # before anything loads torch: libgomp reads its environment once (chestxray.openmp)

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Catalog": "chestxray.data.catalog",
    "load_catalog": "chestxray.data.catalog",
    "save_catalog": "chestxray.data.catalog",
    "read_nih": "chestxray.data.sources",
    "read_folder": "chestxray.data.sources",
    "read_csv_table": "chestxray.data.sources",
    "read_chexpert": "chestxray.data.sources",
    "merge_catalogs": "chestxray.data.merge",
    "read_label_map": "chestxray.data.labelmap",
    "assign_splits": "chestxray.data.split",
    "make_synthetic": "chestxray.data.synth",
    "load_gray": "chestxray.data.imaging",
    "prepare_dataset": "chestxray.data.prepare",
    "ChestXrayDataModule": "chestxray.data.datamodule",
    "build_augment": "chestxray.data.augment",
    "build_model": "chestxray.models",
    "list_models": "chestxray.models",
    "TrainConfig": "chestxray.training.config",
    "resolve_config": "chestxray.training.config",
    "train": "chestxray.training.train",
    "Bundle": "chestxray.models.bundle",
    "load_bundle": "chestxray.models.bundle",
    "save_bundle": "chestxray.models.bundle",
    "predict_images": "chestxray.inference.predict",
    "predict_split": "chestxray.inference.predict",
    "open_scorer": "chestxray.inference.stream",
    "Scorer": "chestxray.inference.scoring",
    "evaluate_run": "chestxray.evaluation.evaluate",
    "evaluate_external": "chestxray.evaluation.external",
    "calibrate_site": "chestxray.evaluation.site_calibration",
    "read_site": "chestxray.inference.site",
    "explain_images": "chestxray.explain.explanations",
    "write_report": "chestxray.report.run_report",
    "compare_runs": "chestxray.evaluation.compare_runs",
    "read_grid": "chestxray.workflows.study",
    "normalise_grid": "chestxray.workflows.study",
    "expand": "chestxray.workflows.study",
    "run_study": "chestxray.workflows.study",
    "read_space": "chestxray.workflows.search_space",
    "TuneSettings": "chestxray.workflows.tune",
    "tune": "chestxray.workflows.tune",
    "run_demo": "chestxray.workflows.demo",
    "ChestXrayError": "chestxray.errors",
    "DataError": "chestxray.errors",
    "ConfigError": "chestxray.errors",
    "ModelError": "chestxray.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import an entry point's module the first time it is used."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chestxray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
