"""Log a bundle as an MLflow pyfunc model (MLflow "models from code": no pickle), for training and export.

The model's code is the file chestxray/deploy/pyfunc_code.py (it sets chestxray.deploy.pyfunc.BundlePyfunc, which
scores through the one scoring path): MLflow stores that file, not a pickled object, so loading the model runs
only chestxray's own code. It is named by path because the wrapper imports inference, a later stage than this one
(training logs the model at the end of every run). What it accepts and returns: chestxray.deploy.pyfunc.

The signature is one free-form tensor (dtype object, shape (-1,)): MLflow passes any array, and a one-column
DataFrame as an array of its values, without reshaping; a column signature would refuse (N, H, W) arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.files import png_data_url

log = logging.getLogger(__name__)

ARTIFACT = "bundle"
MODEL_NAME = "model"
MODEL_CODE = Path(__file__).resolve().parents[1] / "deploy" / "pyfunc_code.py"
INPUT_NOTE = ("image paths (a DataFrame with a 'path' column, or np.asarray of path strings; not when served), image "
              "files as bytes or base64 strings / data: URLs, or pixels (numpy (H, W), (N, H, W) or (N, H, W, 1|3|4); "
              "uint8, or floats in [0, 1] or [0, 255]) of any size")
# What a loader may set (MLflow accepts at load time only the keys logged here): image_root "" = none; allow_paths
# "auto" = paths in process, never when served (see chestxray.deploy.pyfunc), or "true" / "false".
MODEL_CONFIG = {"image_root": "", "allow_paths": "auto"}
METADATA_FIELDS = ("architecture", "labels", "thresholds", "threshold_method", "threshold_tta", "task",
                   "image_size", "resize", "in_chans", "normalization")


def signature(labels: list[str]) -> Any:
    """Input: one free-form tensor (paths or pixels, see the module notes); output: a double per p_<label>."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
                          outputs=Schema([ColSpec("double", f"p_{x}") for x in labels]))


def log_bundle_model(bundle_dir: str | Path, example: str | Path, register_as: str | None = None) -> Any:
    """Log the bundle as a pyfunc model into the active MLflow run (signature, input example, card metadata).

    `example` is an image file used as the input example; `register_as` also registers it in the model registry.
    Returns MLflow's ModelInfo.
    """
    import mlflow

    from chestxray.models.bundle import read_card

    card = read_card(bundle_dir)
    metadata = {k: card.get(k) for k in METADATA_FIELDS}
    metadata["threshold_tta"] = metadata["threshold_tta"] or "none"  # the TTA the model scores with (and thresholds)
    import chestxray

    return mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=str(MODEL_CODE), artifacts={ARTIFACT: str(bundle_dir)},
        signature=signature(list(card["labels"])), input_example=np.array([png_data_url(example)], dtype=object),
        metadata={**metadata, "input": INPUT_NOTE}, registered_model_name=register_as or None,
        model_config=dict(MODEL_CONFIG),
        pip_requirements=[f"chestxray=={chestxray.__version__}"],
    )
