"""A new site's images scored by a bundle, and the split of its patients into a labelled sample and held-out images.

The site is a catalog folder (any split; labels named as the bundle's) or a prepared folder made as the bundle's
training data was (every split is read). Catalog images go through the one file-scoring path (decode and resize as
`prepare` does, the card's normalisation and test-time augmentation); prepared shards through predict_split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import DataError

log = logging.getLogger(__name__)


def is_prepared(path: str | Path) -> bool:
    """True for a prepared folder (manifest.json), False for a catalog folder (catalog.csv)."""
    return (Path(path) / "manifest.json").is_file()


def score_site(bundle: Any, data: str | Path, tta: str, batch_size: int = 64, workers: int = 4) -> pd.DataFrame:
    """One row per usable site image: image_id, patient_id, the 0/1 label columns and p_<label> (raw model
    probabilities), plus in_distribution / unusual for catalog images when the bundle has an OOD reference;
    unreadable catalog images are left out with a warning naming them."""
    from chestxray.inference.engines import bundle_scorer
    from chestxray.inference.predict import predict_split
    from chestxray.inference.stream import iter_predictions

    labels = list(bundle.labels)
    if is_prepared(data):
        from chestxray.data.shards import read_manifest

        manifest = read_manifest(data)
        splits = [s for s, n in (manifest.get("counts") or {}).items() if n] or ["train", "val", "test"]
        frames = [predict_split(bundle, data, s, batch_size=batch_size, tta=tta) for s in splits]
        return pd.concat(frames, ignore_index=True)
    from chestxray.data.catalog import load_catalog

    catalog = load_catalog(data)
    table = catalog.table.reset_index(drop=True)
    if list(catalog.labels) != labels:
        table = _mapped_truth(table, catalog.labels, labels, str(data))
    scorer = bundle_scorer(bundle, tta=tta)  # the engine for this machine (onnxruntime on a CPU)
    frames = list(iter_predictions(scorer, [Path(p) for p in table["path"]], batch_size=batch_size, workers=workers))
    scored = pd.concat(frames, ignore_index=True)
    ok = (scored["status"] == "ok").to_numpy()
    for reason in scored.loc[~ok, "reason"].head(10):
        log.warning("site image left out: %s", reason)
    if not ok.any():
        raise DataError(f"{data}: none of the {len(table)} site images could be read; see the reasons above")
    out = table.loc[ok, ["image_id", "patient_id", *labels]].reset_index(drop=True)
    extra = [c for c in ("in_distribution", "unusual") if c in scored]  # the bundle's OOD score, when it has one
    probs = scored.loc[ok, [f"p_{x}" for x in labels] + extra].reset_index(drop=True)
    return pd.concat([out, probs], axis=1)


def _mapped_truth(table: pd.DataFrame, site_labels: Sequence[str], labels: list[str], where: str) -> pd.DataFrame:
    """The site's labels read as the model's through the label vocabulary (chestxray.data.labelmap, as external
    evaluation reads them), when every model label is then given for every site image; else a DataError."""
    from chestxray.data.labelmap import model_targets, read_label_map, truth_for

    label_map = read_label_map(None)
    targets, _ = model_targets(labels, label_map)
    sources = table["source"].astype(str).tolist() if "source" in table else ["site"] * len(table)
    truth = truth_for(targets, table[list(site_labels)].to_numpy(dtype=float), list(site_labels), sources,
                      label_map, where)
    if len(targets) != len(labels) or np.isnan(truth).any():
        raise DataError(f"{where}: the catalog's labels {list(site_labels)} differ from the model's {labels}, and "
                        "the label vocabulary does not give every model label for every site image; build the site "
                        "catalog with the model's label names (e.g. catalog csv --merge 'NAME=a,b')")
    log.info("%s: site labels read as the model's through the label vocabulary: %s", where,
             ", ".join(f"{m} <- {t}" for m, t in targets.items()))
    return table.drop(columns=list(site_labels)).assign(**{m: truth[:, k].astype(np.uint8)
                                                           for k, m in enumerate(targets)})


def pick_labelled(frame: pd.DataFrame, labels: Sequence[str], n: int | None, seed: int = 0) -> np.ndarray:
    """(N,) bool: the images of whole patients drawn (seeded) until at least n images are in; patients are
    interleaved by stratum so the sample keeps the
    site's mix (the label pattern with up to 3 labels, else with / without any finding). n None: half of the images."""
    n_images = len(frame)
    n = n_images // 2 if n is None else int(n)
    rng = np.random.default_rng(seed)
    patients = frame["patient_id"].astype(str)
    y = frame[list(labels)].to_numpy().astype(int)
    key = ["".join(map(str, row)) for row in y] if len(labels) <= 3 else (y.max(1) > 0).astype(int).astype(str)
    per_patient = pd.Series(key).groupby(patients.to_numpy()).first()
    rank = pd.Series(0.0, index=per_patient.index)
    for _, members in per_patient.groupby(per_patient):
        order = rng.permutation(len(members))
        rank[members.index] = (order + rng.random(len(members))) / len(members)
    chosen, count = set(), 0
    sizes = patients.value_counts()
    for patient in rank.sort_values(kind="stable").index:
        if count >= n:
            break
        chosen.add(patient)
        count += int(sizes[patient])
    return patients.isin(chosen).to_numpy()
