"""Run ONNX graphs with onnxruntime: an exported .onnx file (card read from its metadata; no torch), or a bundle's
cached scoring graph (chestxray.inference.onnx_cache; the card read and checked by chestxray.models.bundle).

onnx_backend plugs any onnxruntime session into the one scoring path (chestxray.inference.scoring); graph outputs
named feature.<layer> become the backend's OOD feature tap."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.data.tasks import log_odds_of
from chestxray.errors import ModelError
from chestxray.inference.scoring import Backend, Scorer, make_scorer
from chestxray.inference.site import SITE_KEY, site_from_json, site_scorer

log = logging.getLogger(__name__)

CARD_KEY = "chestxray_card"  # written by chestxray.deploy.onnx_export
FEATURE_PREFIX = "feature."  # chestxray.inference.onnx_graph names the OOD feature outputs feature.<layer>
LOGITS = "logits"  # chestxray.inference.onnx_graph's logits output (graphs made before it have probabilities only)


def _session(model: Path | bytes, source: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime session (chestxray.inference.runtime.open_session), or ModelError in one line."""
    from chestxray.inference.runtime import onnxruntime, open_session

    onnxruntime()  # ModelError when it is not installed
    try:
        return open_session(model, threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for damaged files
        raise ModelError(f"{source}: not a loadable ONNX model ({' '.join(str(exc).split())[:300]}); "
                         "export it again") from None


def onnx_scorer(path: str | Path, tta: str | None = None, threads: int | None = None) -> Scorer:
    """A Scorer for a .onnx file exported by `chestxray export` (uint8 pixels in, probabilities and logits out), scoring
    through the one path (chestxray.inference.scoring). tta None: the mode the stored thresholds were chosen with;
    another mode than theirs is refused, and so is 'crop' on a uint8 graph."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX file not found; export one with 'chestxray export BUNDLE --onnx {path.name}'")
    session = _session(path, path, threads)
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        raise ModelError(f"{path}: no chestxray card in the ONNX metadata; export the model with 'chestxray export'")
    card = json.loads(meta[CARD_KEY])
    scorer = make_scorer(card, onnx_backend(session, card.get("task")), str(path), tta)
    if SITE_KEY not in meta:
        return scorer
    return site_scorer(scorer, site_from_json(meta[SITE_KEY], f"{path} (exported with --site)"))


def onnx_backend(session: Any, task: str | None = None) -> Backend:
    """The scoring Backend of an onnxruntime session whose graph takes grey levels (B, 1, S, S) and returns
    probabilities first (the card's normalisation and sigmoid inside, as chestxray.inference.onnx_graph writes it),
    then its logits, then optionally feature.<layer> outputs (B, D), read while the backend's tap is open. The
    backend gives the logits (`task`: the card's); a graph made before its logits output gives the log-odds of its
    probabilities (tied where they saturate, as its scores always were).

    A uint8 input takes whole grey levels only (no 'crop' TTA); a float input takes any view."""
    entry = session.get_inputs()[0]
    dtype = np.uint8 if entry.type == "tensor(uint8)" else np.float32
    names = [o.name for o in session.get_outputs()]
    layers = [n[len(FEATURE_PREFIX):] for n in names if n.startswith(FEATURE_PREFIX)]
    score = LOGITS if LOGITS in names else names[0]
    stores: list[dict[str, list[np.ndarray]]] = []  # the open tap's store, if any

    def scores(values: np.ndarray) -> np.ndarray:
        return values if score == LOGITS else log_odds_of(values)

    def forward(views: np.ndarray) -> np.ndarray:
        feed = {entry.name: np.ascontiguousarray(views, dtype=dtype)}
        if not stores:
            return scores(session.run([score], feed)[0])
        wanted = [score, *(FEATURE_PREFIX + layer for layer in layers)]
        outputs = session.run(wanted, feed)
        for layer, values in zip(layers, outputs[1:]):
            stores[-1][layer].append(np.asarray(values, dtype=np.float64))
        return scores(outputs[0])

    @contextlib.contextmanager
    def tap() -> Iterator[dict[str, list[np.ndarray]]]:
        store: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        stores.append(store)
        try:
            yield store
        finally:
            stores.remove(store)

    return Backend("onnxruntime", forward, whole_levels=dtype == np.uint8, tap=tap if layers else None, task=task,
                   gives="logits" if score == LOGITS else "log_odds")


def cached_backend(model: Any, threads: int | None = None, cache_dir: Path | None = None) -> Backend:
    """The onnxruntime Backend of a bundle (folder, run folder or loaded Bundle) through its cached scoring graph,
    exported first where there is none (chestxray.inference.onnx_cache). ModelError when it cannot be made."""
    from chestxray.inference.onnx_cache import scoring_graph
    from chestxray.models.card import bundle_folder, read_card

    loaded = model if hasattr(model, "net") else None
    folder = Path(loaded.path) if loaded is not None else bundle_folder(model)
    card = loaded.card if loaded is not None else read_card(folder)
    graph = scoring_graph(folder, card, bundle=loaded, cache_dir=cache_dir)
    log.info("scoring %s with onnxruntime (graph %s: %s)", folder, "exported now" if graph.exported else "cached",
             graph.where if isinstance(graph.model, bytes) else graph.model)
    session = _session(graph.model, graph.model if isinstance(graph.model, Path) else folder, threads)
    return onnx_backend(session, card.get("task"))
