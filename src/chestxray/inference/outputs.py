"""Prediction rows written as they come: CSV (flat), JSON (one array) or JSONL (one object a line).

A writer takes one batch frame at a time (path, image_id, status, reason, p_<label>, pred_<label>), so a run over
50,000 files never holds its results in memory; files are written atomically (no half file on a crash).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from chestxray.errors import ConfigError
from chestxray.files import atomic_open, spreadsheet_safe

FORMATS: tuple[str, ...] = ("csv", "json", "jsonl")


def add_decisions(frame: pd.DataFrame, labels: Sequence[str], thresholds: dict[str, float]) -> pd.DataFrame:
    """Add a 0/1 column pred_<label> per label (p_<label> >= threshold; empty where p is) to a copy of the frame."""
    missing = [x for x in labels if x not in thresholds]
    if missing:
        raise ConfigError(f"no threshold stored for {missing}; run `chestxray evaluate RUN` to choose them on val")
    out = frame.copy()
    for name in labels:
        out[f"pred_{name}"] = (out[f"p_{name}"] >= thresholds[name]).astype("Int8").where(out[f"p_{name}"].notna())
    return out


def format_for(path: str | Path) -> str:
    """The output format a file name asks for: .json, .jsonl/.ndjson, else CSV."""
    suffix = Path(path).suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".ndjson") else "json" if suffix == ".json" else "csv"


def record(row: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """One row as a nested JSON object: probabilities per finding and the positive findings (None if quarantined)."""
    ok = row["status"] == "ok"
    probs = {n: float(row[f"p_{n}"]) for n in labels} if ok else None
    decided = ok and bool(labels) and f"pred_{labels[0]}" in row
    positive = [n for n in labels if row[f"pred_{n}"] == 1] if decided else None
    out = {"path": row["path"], "image_id": row["image_id"], "status": row["status"],
           "reason": row["reason"] or None, "probabilities": probs, "positive": positive}
    if "predicted_class" in row:  # multi-class: the argmax class (thresholds do not apply)
        out["predicted_class"] = row["predicted_class"] or None
    if "in_distribution" in row:  # how typical of the training images (chestxray.inference.ood)
        out["in_distribution"] = float(row["in_distribution"]) if ok else None
        out["unusual"] = bool(row["unusual"] == 1) if ok else None
    return out


class RowWriter:
    """Writes batch frames to a text stream in one format; close() finishes a JSON array."""

    def __init__(self, stream: IO[str], fmt: str, labels: Sequence[str]) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown output format {fmt!r}; expected one of {FORMATS}")
        self.stream, self.fmt, self.labels = stream, fmt, list(labels)
        self._csv: csv.writer | None = None
        self._first = True

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self.stream, lineterminator="\n")
                self._csv.writerow([spreadsheet_safe(c) for c in frame.columns])
            for values in frame.itertuples(index=False):  # a file named '=…' must not become a formula
                self._csv.writerow(["" if isinstance(v, float) and math.isnan(v) or v is pd.NA else spreadsheet_safe(v)
                                    for v in values])
            return
        for row in frame.to_dict("records"):
            text = json.dumps(record(row, self.labels))
            if self.fmt == "json":
                text = ("[\n" if self._first else ",\n") + text
            self._first = False
            self.stream.write(text if self.fmt == "json" else text + "\n")

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self._first else "\n]\n")
        self.stream.flush()


@contextlib.contextmanager
def open_rows(path: str | Path, labels: Sequence[str], fmt: str | None = None) -> Iterator[RowWriter]:
    """A RowWriter onto a file that appears complete when the block ends (format from the suffix unless given)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = RowWriter(fh, fmt or format_for(path), labels)
        yield writer
        writer.close()


@dataclass
class Tally:
    """Running totals of a prediction run: images scored, quarantined (first reasons kept), positives per finding."""

    labels: list[str]
    scored: int = 0
    quarantined: int = 0
    reasons: list[str] = field(default_factory=list)
    positives: dict[str, int] = field(default_factory=dict)
    keep_reasons: int = 20
    unusual: list[str] = field(default_factory=list)  # paths marked unlike the training images (first kept)
    n_unusual: int = 0

    def add(self, frame: pd.DataFrame) -> None:
        ok = frame["status"] == "ok"
        self.scored += int(ok.sum())
        self.quarantined += int((~ok).sum())
        room = self.keep_reasons - len(self.reasons)
        if room > 0:
            self.reasons.extend(frame.loc[~ok, "reason"].head(room).tolist())
        if "unusual" in frame:
            marked = frame["unusual"] == 1
            self.n_unusual += int(marked.sum())
            room = self.keep_reasons - len(self.unusual)
            self.unusual.extend(f"{p} (in-distribution score {s:.3f})" for p, s in
                                zip(frame.loc[marked, "path"].head(max(room, 0)),
                                    frame.loc[marked, "in_distribution"].head(max(room, 0))))
        for name in self.labels:
            if f"pred_{name}" in frame:
                self.positives[name] = self.positives.get(name, 0) + int((frame[f"pred_{name}"] == 1).sum())
