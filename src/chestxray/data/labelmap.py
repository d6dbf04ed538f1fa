"""One label vocabulary for many sources: each source's finding names mapped onto shared names, and a finding a
source never annotated kept MISSING (NaN), not negative.

A map sends a source label to a *path* of vocabulary labels, the broad finding first and each refinement after it:
Kaggle `PNEUMONIA` -> (Pneumonia,), `BACTERIA` -> (Pneumonia, Bacterial Pneumonia), the COVID set's `COVID-19` ->
(Pneumonia, Viral Pneumonia, COVID-19); a normal class (`NORMAL`, `No Finding`) maps to nothing. What a source
*annotates* is the union of its labels' paths; for its images a vocabulary label is
- 1 when one of the image's positive source labels has it on its path;
- missing (NaN) when the source never annotates it, or a source label that would say it is itself missing;
- missing when the image's finding is given only at a broader level: a COVID-set image labelled plain `Pneumonia`
  annotates Pneumonia = 1 but says nothing of its organism, so Bacterial/Viral Pneumonia and every organism are
  missing for it ("organism where given"); an image whose finding names one organism is 0 for the others;
- 0 otherwise (the source annotates it and the image does not have it; a negative parent makes its refinements 0).
So a Kaggle NORMAL image is Pneumonia = 0 with every other finding missing (Kaggle annotates Pneumonia only), and a
NIH "No Finding" image is 0 for the 14 NIH findings and missing for COVID-19. torchxrayvision's relabel_dataset
does the first two rules (a finding outside a dataset's list becomes NaN); the refinement rule is ours.

The default map (DEFAULT_MAP, documented in docs/datasets.md) keeps the NIH ChestX-ray14 names as the base; a YAML
file changes it (read_label_map): per label for every source (`map:`), per source (`sources: NAME: map:`), known
negatives per source (`negative:`, e.g. COVID-19 for images taken before 2019), and the vocabulary and its order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chestxray.data.labels import ALIASES, NIH14
from chestxray.errors import ConfigError, DataError, quote

log = logging.getLogger(__name__)

Path_ = tuple[str, ...]  # a vocabulary path: broad finding first, refinements after

_VIRAL = ("Pneumonia", "Viral Pneumonia")
_BACTERIAL = ("Pneumonia", "Bacterial Pneumonia")
_FUNGAL = ("Pneumonia", "Fungal Pneumonia")
# Source label (compared case-insensitively) -> vocabulary path. NIH names map to themselves (ALIASES spelled as NIH).
DEFAULT_MAP: dict[str, Path_] = {
    **{name: (name,) for name in NIH14},
    **{alias: (name,) for alias, name in ALIASES.items()},
    # normal classes: no finding
    "No Finding": (), "NORMAL": (), "normal": (), "none": (),
    # Kaggle pediatric pneumonia (Kermany et al.): binary folders, or subtypes from the file names
    "PNEUMONIA": ("Pneumonia",), "BACTERIA": _BACTERIAL, "VIRUS": _VIRAL,
    # COVID-19 image data collection (Cohen et al.): one diagnosis per image, organism where given
    "COVID-19": (*_VIRAL, "COVID-19"), "SARS": (*_VIRAL, "SARS"), "MERS": (*_VIRAL, "MERS"),
    "MERS-CoV": (*_VIRAL, "MERS"), "SARS-CoV-2": (*_VIRAL, "COVID-19"),
    "Varicella": (*_VIRAL, "Varicella"), "Influenza": (*_VIRAL, "Influenza"), "Herpes": (*_VIRAL, "Herpes"),
    "Viral": _VIRAL, "Bacterial": _BACTERIAL, "Fungal": _FUNGAL,
    "Streptococcus": (*_BACTERIAL, "Streptococcus"), "Klebsiella": (*_BACTERIAL, "Klebsiella"),
    "Legionella": (*_BACTERIAL, "Legionella"), "E.Coli": (*_BACTERIAL, "E.Coli"),
    "Mycoplasma": (*_BACTERIAL, "Mycoplasma"), "Chlamydophila": (*_BACTERIAL, "Chlamydophila"),
    "Staphylococcus": (*_BACTERIAL, "Staphylococcus"), "Nocardia": (*_BACTERIAL, "Nocardia"),
    "Pneumocystis": (*_FUNGAL, "Pneumocystis"), "Aspergillosis": (*_FUNGAL, "Aspergillosis"),
    "Candida": (*_FUNGAL, "Candida"),
    "Lipoid": ("Pneumonia", "Lipoid Pneumonia"), "Aspiration": ("Pneumonia", "Aspiration Pneumonia"),
    "ARDS": ("ARDS",), "Tuberculosis": ("Tuberculosis",),
    # CheXpert / MIMIC-CXR (CheXpert labeler) names that differ from NIH's
    "Pleural Effusion": ("Effusion",), "Lung Opacity": ("Lung Opacity",), "Lung Lesion": ("Lung Lesion",),
    "Enlarged Cardiomediastinum": ("Enlarged Cardiomediastinum",), "Fracture": ("Fracture",),
    "Support Devices": ("Support Devices",), "Pleural Other": ("Pleural Other",),
}


@dataclass(frozen=True)
class LabelMap:
    """A map from source labels to vocabulary paths: `common` for every source, `per_source` overriding it for
    one source (by name), `negative` vocabulary labels known negative for every image of a source, `vocabulary`
    the merged labels and their order (None: NIH names first in NIH order, then the others as first met)."""

    common: dict[str, Path_] = field(default_factory=lambda: dict(DEFAULT_MAP))
    per_source: dict[str, dict[str, Path_]] = field(default_factory=dict)
    negative: dict[str, tuple[str, ...]] = field(default_factory=dict)
    vocabulary: tuple[str, ...] | None = None
    origin: str = "default"

    def path(self, source: str, label: str) -> tuple[Path_, bool]:
        """The vocabulary path of one source label, and whether the map knows it (unknown: the label itself)."""
        for table in (self.per_source.get(source, {}), self.common):
            hit = _lookup(table, label)
            if hit is not None:
                return hit, True
        return (label.strip(),), False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for catalog.json and the run card (what the labels meant)."""
        return {"origin": self.origin, "per_source": {s: {k: list(v) for k, v in m.items()}
                                                      for s, m in self.per_source.items()},
                "negative": {s: list(v) for s, v in self.negative.items()},
                "vocabulary": list(self.vocabulary) if self.vocabulary else None}


def _lookup(table: Mapping[str, Path_], label: str) -> Path_ | None:
    """A label's path in one table: exact spelling first, then ignoring letter case and surrounding spaces."""
    name = label.strip()
    if name in table:
        return table[name]
    folded = name.casefold()
    for key, value in table.items():
        if key.casefold() == folded:
            return value
    return None


def _as_path(value: Any, where: str) -> Path_:
    """A YAML target: one name, a list (a path: broad first), or empty / null (no finding)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip(),) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        path = tuple(v.strip() for v in value)
        if len(set(path)) != len(path):
            raise ConfigError(f"{where}: the path {value} names a label twice")
        return path
    raise ConfigError(f"{where}: expected a label name or a list of names (broad finding first), got {value!r}")


def _map_table(raw: Any, where: str) -> dict[str, Path_]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of source label: vocabulary label(s), got {type(raw).__name__}")
    return {str(k).strip(): _as_path(v, f"{where}.{k}") for k, v in raw.items()}


def read_label_map(path: str | Path | None) -> LabelMap:
    """The default map, or the YAML file's: `default: false` starts from nothing; `map:` adds or replaces source
    labels for every source; `sources: {NAME: {map: …, negative: […]}}` per source; `vocabulary: […]` fixes the
    merged labels and their order. A bad file raises ConfigError naming it and the key."""
    if path is None:
        return LabelMap()
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such label map file; check the --map path")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping with keys map, sources, vocabulary, default")
    unknown = sorted(set(raw) - {"map", "sources", "vocabulary", "default"})
    if unknown:
        raise ConfigError(f"{file}: unknown key(s) {unknown}; a label map has map, sources, vocabulary and default")
    common = dict(DEFAULT_MAP) if raw.get("default", True) else {}
    common.update(_map_table(raw.get("map"), f"{file}: map"))
    per_source: dict[str, dict[str, Path_]] = {}
    negative: dict[str, tuple[str, ...]] = {}
    sources = raw.get("sources") or {}
    if not isinstance(sources, dict):
        raise ConfigError(f"{file}: sources must map a source name to its settings (map, negative)")
    for name, spec in sources.items():
        where = f"{file}: sources.{name}"
        if not isinstance(spec, dict) or set(spec) - {"map", "negative"}:
            raise ConfigError(f"{where}: expected a mapping with 'map' and/or 'negative'")
        per_source[str(name)] = _map_table(spec.get("map"), f"{where}.map")
        neg = spec.get("negative") or []
        if not isinstance(neg, list) or not all(isinstance(n, str) for n in neg):
            raise ConfigError(f"{where}.negative: expected a list of vocabulary labels")
        negative[str(name)] = tuple(n.strip() for n in neg)
    vocabulary = raw.get("vocabulary")
    if vocabulary is not None:
        if not isinstance(vocabulary, list) or not vocabulary or not all(isinstance(v, str) for v in vocabulary):
            raise ConfigError(f"{file}: vocabulary must be a non-empty list of label names")
        if len(set(vocabulary)) != len(vocabulary):
            raise ConfigError(f"{file}: vocabulary names a label twice")
        vocabulary = tuple(v.strip() for v in vocabulary)
    return LabelMap(common, per_source, negative, vocabulary, origin=str(file))


@dataclass(frozen=True)
class SourceLabels:
    """How one source's labels land in the vocabulary: each source label's path, the vocabulary labels the source
    annotates, the parent of each refinement, and the labels the map did not know (kept as themselves)."""

    source: str
    labels: tuple[str, ...]
    paths: dict[str, Path_]
    annotated: tuple[str, ...]
    parent: dict[str, str]
    negative: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"paths": {k: list(v) for k, v in self.paths.items()}, "annotated": list(self.annotated),
                "negative": list(self.negative), "kept_as_is": list(self.unknown)}


def source_labels(source: str, labels: Sequence[str], label_map: LabelMap) -> SourceLabels:
    """Resolve one source's labels through the map; a label given two different parents is a ConfigError."""
    paths: dict[str, Path_] = {}
    unknown = []
    for name in labels:
        paths[name], known = label_map.path(source, name)
        if not known:
            unknown.append(name)
    parent: dict[str, str] = {}
    for name, path in paths.items():
        for up, down in zip(path, path[1:]):
            if parent.setdefault(down, up) != up:
                raise ConfigError(f"label map: {down!r} is a refinement of both {parent[down]!r} and {up!r} in "
                                  f"source {source!r} (source label {name!r}); give it one broader finding")
    annotated = tuple(dict.fromkeys(t for path in paths.values() for t in path))
    negative = label_map.negative.get(source, ())
    return SourceLabels(source, tuple(labels), paths, annotated, parent, negative, tuple(unknown))


def vocabulary_order(resolved: Iterable[SourceLabels], label_map: LabelMap) -> tuple[str, ...]:
    """The merged labels: the map's vocabulary, else NIH names in NIH order then the others in first-met order."""
    if label_map.vocabulary:
        return label_map.vocabulary
    seen = list(dict.fromkeys(t for s in resolved for t in (*s.annotated, *s.negative)))
    return tuple([n for n in NIH14 if n in seen] + [n for n in seen if n not in NIH14])


def to_vocabulary(matrix: np.ndarray, resolved: SourceLabels, vocabulary: Sequence[str], where: str = "") -> np.ndarray:
    """(N, V) float: 1, 0 or NaN (missing) per vocabulary label, from a source's (N, L) matrix of 0/1/NaN in
    `resolved.labels` order, by the rules in the module docstring."""
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(resolved.labels):
        raise DataError(f"{where}: label matrix of shape {values.shape} for {len(resolved.labels)} labels")
    n = values.shape[0]
    pos = {t: np.zeros(n, bool) for t in resolved.annotated}
    unknown = {t: np.zeros(n, bool) for t in resolved.annotated}
    for j, name in enumerate(resolved.labels):
        column = values[:, j]
        for t in resolved.paths[name]:
            pos[t] |= column == 1
            unknown[t] |= np.isnan(column)
    out: dict[str, np.ndarray] = {}
    for t in _by_depth(resolved):
        value = np.where(pos[t], 1.0, np.where(unknown[t], np.nan, 0.0))
        up = resolved.parent.get(t)
        if up is not None:
            given = np.any([pos[c] for c, p in resolved.parent.items() if p == up], axis=0)
            vague = (out[up] == 1) & ~given  # the broad finding, no refinement of it given
            value = np.where((value == 0) & (vague | np.isnan(out[up])), np.nan, value)
        out[t] = value
    for t in resolved.negative:
        if t in out and np.any(out[t] == 1):
            raise DataError(f"{where}: the label map says every image of source {resolved.source!r} is negative for "
                            f"{t!r}, but {int(np.sum(out[t] == 1))} image(s) are positive; fix the map's 'negative'")
        out[t] = np.zeros(n)
    result = np.full((n, len(vocabulary)), np.nan)
    for k, name in enumerate(vocabulary):
        if name in out:
            result[:, k] = out[name]
    return result


def _by_depth(resolved: SourceLabels) -> list[str]:
    """The source's annotated labels, every parent before its refinements."""
    def depth(t: str) -> int:
        d = 0
        while t in resolved.parent:
            t, d = resolved.parent[t], d + 1
        return d

    return sorted(resolved.annotated, key=depth)


def describe(resolved: SourceLabels) -> str:
    """'PNEUMONIA -> Pneumonia; NORMAL -> (no finding)' for a summary line."""
    parts = [f"{quote(k, 40)} -> {' > '.join(v) if v else '(no finding)'}" for k, v in resolved.paths.items()]
    return "; ".join(parts)


def model_targets(model_labels: Sequence[str], label_map: LabelMap, source: str = "model"
                  ) -> tuple[dict[str, str], list[str]]:
    """What each of a model's output labels scores in the vocabulary: the most specific label on its path (Kaggle
    `PNEUMONIA` -> Pneumonia, `BACTERIA` -> Bacterial Pneumonia); and why others cannot be compared (a normal
    class, or two outputs scoring the same vocabulary label)."""
    targets: dict[str, str] = {}
    skipped: list[str] = []
    for name in model_labels:
        path, _ = label_map.path(source, name)
        if not path:
            skipped.append(f"{name!r} is a normal class (no finding to score)")
            continue
        targets[name] = path[-1]
    counts: dict[str, list[str]] = {}
    for name, target in targets.items():
        counts.setdefault(target, []).append(name)
    for target, names in counts.items():
        if len(names) > 1:
            skipped.append(f"{names} all score {target!r}: ambiguous, left out")
            for name in names:
                targets.pop(name)
    return targets, skipped


def truth_for(targets: dict[str, str], values: np.ndarray, data_labels: Sequence[str], sources: Sequence[str],
              label_map: LabelMap, where: str = "") -> np.ndarray:
    """(N, len(targets)) float 1/0/NaN: each model output's vocabulary label read from a dataset's own labels
    (values (N, L) 0/1/NaN in `data_labels` order), source by source (`sources` per row) through the map."""
    wanted = list(dict.fromkeys(targets.values()))
    out = np.full((len(values), len(targets)), np.nan)
    sources = np.asarray([str(s) for s in sources], dtype=object)
    for source in dict.fromkeys(sources.tolist()):
        rows = np.flatnonzero(sources == source)
        resolved = source_labels(str(source), data_labels, label_map)
        mapped = to_vocabulary(np.asarray(values, dtype=float)[rows], resolved, wanted, where)
        for k, target in enumerate(targets.values()):
            out[rows, k] = mapped[:, wanted.index(target)]
    return out
