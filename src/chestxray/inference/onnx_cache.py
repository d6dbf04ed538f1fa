"""A bundle's ONNX scoring graph, exported once and cached beside the bundle, keyed by the weights' hash.

BUNDLE/scoring.onnx holds the network as chestxray.inference.onnx_graph writes it for scoring (float32 grey levels
in, so every TTA view fits; probabilities and the OOD features out); BUNDLE/scoring.json holds its key and the
sha256 of the .onnx file. The key is the sha256 of the weights file, of the card fields baked into the graph
(architecture, label count, channels, size, normalisation, task) and of GRAPH_VERSION: retrained weights, a
changed card or a new graph layout all mean a new key. Thresholds, metrics and the OOD reference are not in the
graph, so evaluate does not invalidate it.

A cached graph is used only when its key and its file hash match; a stale or damaged one is exported again, with
a warning. Files are written atomically (the .onnx first, then scoring.json, so a crash between the two reads as
stale). A bundle folder that cannot be written (read-only, a shared model store) caches under the user cache dir
(platformdirs: ~/.cache/chestxray/onnx/<key>.onnx on Linux); where nothing can be written the graph is exported in
memory, with a one-line note.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chestxray.errors import ModelError
from chestxray.files import atomic_path, write_json

log = logging.getLogger(__name__)

GRAPH_VERSION = 3  # bump when onnx_graph changes the graph (2: the logits output; 3: constant 'same' pads, pooling)
CACHE_ONNX, CACHE_META = "scoring.onnx", "scoring.json"
GRAPH_FIELDS = ("architecture", "num_labels", "in_chans", "image_size", "normalization", "input_mean", "input_std",
                "task")


@dataclass(frozen=True)
class CachedGraph:
    """The scoring graph to open: a file (cached) or serialised bytes (nothing writable), and where it came from."""

    model: Path | bytes
    where: str  # "bundle", "user cache" or "memory"
    exported: bool  # exported by this call (False: read from the cache)


def user_cache_dir() -> Path:
    """Where graphs of read-only bundles are cached (platformdirs' user cache dir for chestxray, folder onnx)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("chestxray")) / "onnx"


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def cache_key(folder: Path, card: dict[str, Any]) -> str:
    """sha256 of the weights file, the graph-relevant card fields and GRAPH_VERSION (hex)."""
    from chestxray.models.card import WEIGHTS

    weights = folder / WEIGHTS
    try:
        digest = _sha256(weights)
    except OSError as exc:
        raise ModelError(f"{weights}: cannot read the weights ({exc.strerror or exc}); the bundle is incomplete, "
                         "export it again") from None
    fields = json.dumps({k: card.get(k) for k in GRAPH_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(f"{digest}\n{fields}\n{GRAPH_VERSION}".encode()).hexdigest()


def _places(folder: Path, key: str, cache_dir: Path | None) -> list[tuple[Path, Path, str]]:
    users = cache_dir or user_cache_dir()
    return [(folder / CACHE_ONNX, folder / CACHE_META, "bundle"),
            (users / f"{key[:32]}.onnx", users / f"{key[:32]}.json", "user cache")]


def _problem(onnx: Path, meta: Path, key: str) -> str | None:
    """Why a cached graph cannot be used (None: it can)."""
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{meta.name} is missing"
    except (OSError, ValueError) as exc:
        return f"{meta.name} is unreadable ({exc})"
    if not isinstance(info, dict) or info.get("key") != key:
        return "made for other weights or another card (key differs)"
    try:
        if _sha256(onnx) != info.get("onnx_sha256"):
            return f"{onnx.name} does not match its recorded hash (damaged or replaced)"
    except OSError as exc:
        return f"{onnx.name} is unreadable ({exc.strerror or exc})"
    return None


def _export(folder: Path, bundle: Any | None) -> tuple[bytes, list[str]]:
    """The serialised scoring graph (float32 input, probabilities, logits + OOD features) and its feature layers;
    torch."""
    from chestxray.inference.onnx_graph import FEATURE_PREFIX, graph_proto
    from chestxray.models.bundle import load_bundle

    model = bundle if bundle is not None else load_bundle(folder)
    try:
        try:
            proto = graph_proto(model, uint8=False, features=True)
        except Exception as exc:  # noqa: BLE001 - the feature outputs are optional: OOD then falls back to torch
            log.info("%s: exporting without OOD features (%s)", folder, " ".join(str(exc).split())[:200])
            proto = graph_proto(model, uint8=False, features=False)
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types; the user needs the model and reason
        raise ModelError(f"{folder}: ONNX export of {model.card['architecture']!r} failed ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from None
    layers = [o.name[len(FEATURE_PREFIX):] for o in proto.graph.output if o.name.startswith(FEATURE_PREFIX)]
    return proto.SerializeToString(), layers


def _write(onnx: Path, meta: Path, data: bytes, key: str, info: dict[str, Any]) -> None:
    with atomic_path(onnx) as tmp:
        tmp.write_bytes(data)
    write_json(meta, {"key": key, "onnx_sha256": hashlib.sha256(data).hexdigest(), **info})


def scoring_graph(folder: str | Path, card: dict[str, Any], bundle: Any | None = None,
                  cache_dir: Path | None = None) -> CachedGraph:
    """The bundle's scoring graph: the cached one when valid, else exported now and cached (see the module doc).

    `bundle`: the loaded Bundle when the caller has it (saves loading the weights again to export); `cache_dir`:
    instead of the user cache dir. ModelError when the architecture cannot be exported."""
    folder = Path(folder)
    key = cache_key(folder, card)
    places = _places(folder, key, cache_dir)
    problems = []
    for onnx, meta, where in places:
        if not onnx.exists() and not meta.exists():
            continue
        problem = _problem(onnx, meta, key)
        if problem is None:
            if problems:  # e.g. a read-only bundle folder holding an old graph: the user cache has the right one
                log.info("%s not used (%s)", *problems[0])
            return CachedGraph(onnx, where, exported=False)
        problems.append((onnx, problem))
    for onnx, problem in problems:
        log.warning("%s: cached ONNX graph not used: %s; exporting it again", onnx, problem)
    data, layers = _export(folder, bundle)
    import torch

    info = {"graph_version": GRAPH_VERSION, "architecture": card["architecture"], "bundle": str(folder.resolve()),
            "feature_layers": layers, "torch": torch.__version__}
    failures = []
    for onnx, meta, where in places:
        try:
            _write(onnx, meta, data, key, info)
        except OSError as exc:
            failures.append(f"{onnx.parent}: {exc.strerror or exc}")
            continue
        log.info("exported the ONNX scoring graph of %s to %s", folder, onnx)
        return CachedGraph(onnx, where, exported=True)
    log.warning("could not cache the ONNX scoring graph of %s (%s); using it from memory, so each start exports "
                "it again", folder, "; ".join(failures))
    return CachedGraph(data, "memory", exported=True)
