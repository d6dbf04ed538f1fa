"""A bundle's scoring backend on the engine that suits this machine: ONNX Runtime on the CPU, PyTorch on a GPU.

`engine` 'auto' (chestxray.inference.runtime.resolve_engine): the bundle's cached ONNX graph through onnxruntime
when no GPU is used, else PyTorch; where the graph cannot be made (an architecture the exporter does not handle,
onnxruntime missing) 'auto' falls back to PyTorch with a one-line warning, while an explicit 'onnxruntime' fails
with the reason. A bundle whose graph is cached is scored without building its PyTorch network, loading its
weights or importing torch at all (about 1.5 CPU seconds saved per process).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from chestxray.errors import ModelError
from chestxray.inference.ood import OodProbe, load_reference
from chestxray.inference.runtime import resolve_engine
from chestxray.inference.scoring import Backend, Scorer, make_scorer, threshold_tta

log = logging.getLogger(__name__)


def bundle_backend(model: Any, device: str | None = None, engine: str = "auto", threads: int | None = None) -> Backend:
    """The scoring Backend of a bundle (folder, run folder or loaded Bundle) on the resolved engine.

    `device`: torch's ('cpu', 'cuda', …; None: the GPU when present); `threads`: onnxruntime's intra-op threads
    (None: the usable cores)."""
    chosen = resolve_engine(engine, None if device is None else str(device))
    if chosen == "onnxruntime":
        from chestxray.inference.onnx_model import cached_backend

        try:
            return cached_backend(model, threads)
        except ModelError as exc:
            if engine == "onnxruntime":
                raise
            log.warning("%s; scoring with PyTorch instead", exc)
    from chestxray.inference.predict import as_bundle, torch_backend

    loaded = as_bundle(model)
    return torch_backend(loaded.net, loaded.card, device)


def with_ood(scorer: Scorer, folder: str | Path) -> Scorer:
    """The scorer with the OOD probe of the bundle at `folder` when it has a reference (evaluate fits one) and the
    backend can read features; else unchanged."""
    from dataclasses import replace

    reference = load_reference(folder)  # ood.safetensors + ood.json beside the weights
    if reference is None:
        return scorer
    if scorer.backend.tap is None:
        log.warning("%s: the %s backend cannot read features; inputs are not checked against the training images",
                    folder, scorer.backend.name)
        return scorer
    return replace(scorer, ood=OodProbe(scorer.backend.tap, reference))


def bundle_scorer(model: Any, tta: str | None = None, device: str | None = None, engine: str = "auto",
                  threads: int | None = None) -> Scorer:
    """A Scorer for a bundle (folder, run folder or loaded Bundle) on the resolved engine, with the stored TTA (tta
    None; another mode than the stored thresholds' is refused) and its OOD probe where it has a reference."""
    from chestxray.models.card import bundle_folder, read_card

    loaded = model if hasattr(model, "net") else None
    folder = Path(loaded.path) if loaded is not None else bundle_folder(model)
    card = loaded.card if loaded is not None else read_card(folder)
    tta = threshold_tta(card, tta)  # a refused mode fails before any export
    backend = bundle_backend(loaded if loaded is not None else folder, device, engine, threads)
    return with_ood(make_scorer(card, backend, str(folder), tta), folder)
