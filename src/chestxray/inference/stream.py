"""Scoring image files in batches with bounded memory, for a PyTorch bundle or an ONNX export alike.

A Scorer (chestxray.inference.scoring, the one scoring path) turns uint8 pixels (B, S, S) into probabilities
(B, labels). This module decodes files (scoring.load_pixels) in threads, one batch at a time, and yields one
small frame per batch, so 50,000 files never sit in memory at once. It imports no torch: an ONNX model runs
without it (chestxray.inference.onnx_model).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.data.tasks import is_multiclass
from chestxray.errors import ConfigError, DataError, printable
from chestxray.inference.ood import is_unusual
from chestxray.inference.scoring import Scorer, load_pixels, pixel_hash, threshold_tta  # noqa: F401 (public here too)

log = logging.getLogger(__name__)

ROW_COLUMNS = ["path", "image_id", "status", "reason"]
PREDICTED_CLASS = "predicted_class"  # multiclass: the argmax class of each image
IN_DISTRIBUTION, UNUSUAL = "in_distribution", "unusual"  # columns added when the model has an OOD reference


def _decode(path: Path, card: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    try:
        return load_pixels(path, card), ""
    except DataError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the others; it is listed with the reason
        return None, f"{path}: unexpected {type(exc).__name__} while decoding ({exc})"


def iter_predictions(scorer: Scorer, paths: Sequence[Path], batch_size: int = 32,
                     workers: int = 4, hashes: bool = False) -> Iterator[pd.DataFrame]:
    """One frame per batch of paths, in order: path, image_id, status ('ok'|'quarantined'), reason, p_<label>;
    with `hashes` also pixel_hash (of the model-input pixels; '' for a quarantined file)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    card, columns = scorer.card, scorer.labels
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = [Path(p) for p in paths[start:start + batch_size]]
            decoded = list(pool.map(lambda p: _decode(p, card), chunk))
            frame = pd.DataFrame({  # names that are not UTF-8 are shown with \xNN escapes (a UTF-8 writer's crash)
                "path": [printable(p) for p in chunk], "image_id": [printable(p.stem) for p in chunk],
                "status": ["ok" if px is not None else "quarantined" for px, _ in decoded],
                "reason": [printable(reason) for _, reason in decoded],
            })
            if hashes:
                frame["pixel_hash"] = [pixel_hash(px) if px is not None else "" for px, _ in decoded]
            scores = np.full((len(chunk), len(columns)), np.nan)
            typical = np.full(len(chunk), np.nan)
            ok = frame["status"].to_numpy() == "ok"
            if ok.any():
                scores[ok], found = scorer.score_with_ood(np.stack([px for px, _ in decoded if px is not None]))
                if found is not None:
                    typical[ok] = found
            for path, (px, reason) in zip(chunk, decoded):
                if px is None:
                    log.info("quarantined %s: %s", path, reason)
            yield _with_scores(frame, scorer, scores, typical)


def _with_scores(frame: pd.DataFrame, scorer: Scorer, scores: np.ndarray, typical: np.ndarray) -> pd.DataFrame:
    """The row frame with p_<label> columns, and the OOD and predicted-class columns where the model has them: every
    frame of one model gets the same columns, so CSV and JSON writers keep the header of the first."""
    frame = pd.concat([frame, pd.DataFrame(scores, columns=[f"p_{name}" for name in scorer.labels])], axis=1)
    if scorer.ood is not None:  # how typical of the training images (chestxray.inference.ood)
        frame[IN_DISTRIBUTION] = typical
        frame[UNUSUAL] = pd.Series(is_unusual(typical, scorer.false_alarm)).astype("Int8").where(~np.isnan(typical))
    if is_multiclass(scorer.card.get("task")):
        frame[PREDICTED_CLASS] = predicted_classes(scores, scorer.labels)
    return frame


def predicted_classes(scores: np.ndarray, labels: Sequence[str]) -> list[str]:
    """The argmax class name per row of (N, K) probabilities ('' for a row of NaN, e.g. a quarantined file)."""
    ok = ~np.isnan(scores).any(1)
    best = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    return [labels[int(k)] if good else "" for k, good in zip(best, ok)]


def problem_rows(problems: Sequence[tuple[str, str]], scorer: Scorer) -> pd.DataFrame:
    """Quarantined rows for inputs that named no file (a pattern without matches, an empty folder), with the same
    columns as iter_predictions' frames for this scorer."""
    frame = pd.DataFrame({"path": [p for p, _ in problems], "image_id": [Path(p).stem for p, _ in problems],
                          "status": "quarantined", "reason": [r for _, r in problems]}, columns=ROW_COLUMNS)
    return _with_scores(frame, scorer, np.full((len(frame), len(scorer.labels)), np.nan), np.full(len(frame), np.nan))


def open_scorer(model: str | Path, tta: str | None = None, device: str | None = None,
                site: str | None = None, engine: str = "auto") -> Scorer:
    """A Scorer for a bundle folder, a run folder or an exported .onnx file (the latter needs no torch).

    tta None: the mode the stored thresholds were chosen with (see threshold_tta). site: the name (or folder) of a
    site profile stored beside the model (chestxray.inference.site): its probabilities and thresholds instead.
    engine: what runs a bundle (chestxray.inference.engines: its ONNX graph, cached beside it, through onnxruntime on
    the CPU by default; PyTorch on a GPU)."""
    if Path(model).suffix.lower() == ".onnx":
        from chestxray.inference.onnx_model import onnx_scorer

        scorer = onnx_scorer(model, tta=tta)
    else:
        from chestxray.inference.engines import bundle_scorer

        scorer = bundle_scorer(model, tta=tta, device=device, engine=engine)
    if site is None:
        return scorer
    if scorer.card.get("site"):
        raise ConfigError(f"{model} was exported with site profile {scorer.card['site']!r} and applies it already; "
                          "leave --site out, or export the bundle again with another --site")
    from chestxray.inference.site import load_site, site_scorer

    return site_scorer(scorer, load_site(model, site, scorer.card))
