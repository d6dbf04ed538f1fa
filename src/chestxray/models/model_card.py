"""The model card every bundle carries (card.json `model_card`): intended use, the population it was trained on, and
its limits, in words a clinician or a reviewer can read (Mitchell et al., "Model Cards for Model Reporting", 2019).

Training writes it from the PREPARED manifest (images and positives per split, the source) and, when the catalog
is still where prepare read it, the collection's patients, sex, age and view; evaluation rewrites the limits with
what it measured (findings whose threshold is not validated, intervals that reach 0.5). `serve` shows it on the page
and in GET /model, and the run report shows it. Nothing here is a claim of fitness for clinical use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.files import read_csv

log = logging.getLogger(__name__)

INTENDED_USE = ("Research and teaching: to study how a classifier trained on these images behaves, and to try it on "
                "images like them. Not a medical device: not for diagnosis, triage, screening or any decision about a "
                "patient.")
NOT_INTENDED = ("Images unlike the training images (other body parts, lateral views, photographs, other hospitals or "
                "age groups until checked), and any use where a wrong answer can reach a patient.")


def _age_summary(ages: pd.Series) -> dict[str, Any] | None:
    """Median, quartiles and range of the known ages (years), or None when none is known."""
    values = pd.to_numeric(ages, errors="coerce").dropna()
    values = values[(values >= 0) & (values < 130)]
    if values.empty:
        return None
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": round(float(median), 1), "q1": round(float(q1), 1), "q3": round(float(q3), 1),
            "min": round(float(values.min()), 1), "max": round(float(values.max()), 1), "known": int(len(values))}


def _collection(catalog_path: str | None) -> dict[str, Any]:
    """Patients, sex, age and view of the whole catalog the data came from (empty when it cannot be read)."""
    if not catalog_path or "://" in str(catalog_path):
        return {}
    path = Path(catalog_path)
    csv = path / "catalog.csv" if path.is_dir() else path
    if not csv.is_file():
        return {}
    try:
        table = read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        log.info("model card: catalog %s not readable (%s); population without patients/sex/age", csv, exc)
        return {}
    per_patient = table.groupby("patient_id").first() if "patient_id" in table else table
    out: dict[str, Any] = {"images": int(len(table)), "patients": int(len(per_patient))}
    if "sex" in table:
        sex = per_patient["sex"].str.strip().str.upper().replace({"": "unknown"})
        out["sex"] = {str(k): int(v) for k, v in sex.value_counts().sort_index().items()}
    if "age" in table:
        out["age"] = _age_summary(per_patient["age"])
    if "view" in table:
        view = table["view"].str.strip().replace({"": "unknown"})
        out["views"] = {str(k): int(v) for k, v in view.value_counts().head(6).items()}
    return out


def training_population(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the model was trained on: source, images per split, train prevalence per label, and (from the catalog,
    when readable) the collection's patients, sex, age and views."""
    splits = manifest.get("splits", {})
    train = splits.get("train", {})
    count = int(train.get("count", 0))
    prevalence = ({name: round(int(p) / count, 4) for name, p in zip(manifest.get("labels", []),
                                                                       train.get("positives", []))} if count else {})
    population: dict[str, Any] = {"source": manifest.get("source") or "unknown",
                                  "images": {s: int(e.get("count", 0)) for s, e in splits.items()},
                                  "train_prevalence": prevalence, "image_size": manifest.get("image_size")}
    if manifest.get("folds"):
        folds = manifest["folds"]
        population["cross_validation"] = f"fold {folds.get('fold')} of {folds.get('k')} (seed {folds.get('seed')})"
    collection = _collection(manifest.get("catalog"))
    if collection:
        population["collection"] = collection
    return population


def card_limits(card: dict[str, Any]) -> list[str]:
    """The limits in words, from the card's population and (after evaluation) its findings block."""
    population = (card.get("model_card") or {}).get("population") or {}
    images = population.get("images") or {}
    limits = [f"Trained on {images.get('train', '?')} images from {population.get('source', 'one source')}; how it "
              "does on other hospitals, scanners, populations or age groups is unknown until it is checked on labelled "
              "images from there (chestxray calibrate, docs/new-site.md)."]
    collection = population.get("collection") or {}
    age = collection.get("age")
    if age and age.get("max") is not None and age["max"] < 18:
        limits.append(f"Children only in training (ages {age['min']:g}-{age['max']:g}): not for adults.")
    elif age:
        limits.append(f"Training ages {age['min']:g}-{age['max']:g} (median {age['median']:g}).")
    elif collection or population:
        limits.append("Age and sex of the training patients are not recorded in the catalog.")
    if card.get("image_size"):
        limits.append(f"It sees each image at {card['image_size']} x {card['image_size']} px "
                      f"({card.get('resize', 'pad')}): small findings may be invisible at that size.")
    findings = card.get("findings") or {}
    unvalidated = [n for n, f in findings.items() if f.get("validated") is False]
    if unvalidated:
        limits.append(f"No decision for {', '.join(unvalidated)}: its threshold is not validated (too few patients "
                      "on the validation split); only the probability is shown.")
    chance = [n for n, f in findings.items() if f.get("interval_reaches_chance")]
    if chance:
        limits.append(f"For {', '.join(chance)} the AUROC interval reaches 0.5: it may be no better than chance.")
    unmeasured = [n for n, f in findings.items() if f.get("low") is None]
    if unmeasured:
        limits.append(f"No interval for {', '.join(unmeasured)}: too few patients to measure it (the minimum-sample "
                      "rule, docs/statistics.md).")
    if not findings:
        limits.append("Not evaluated yet: no threshold is validated and no quality is measured (chestxray evaluate).")
    return limits


def model_card(card: dict[str, Any], manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `model_card` block for a card: intended use, the population (from `manifest`, else the card's own), and
    the limits computed from both."""
    population = training_population(manifest) if manifest is not None else \
        (card.get("model_card") or {}).get("population") or {}
    block = {"intended_use": INTENDED_USE, "not_intended": NOT_INTENDED, "population": population}
    return {**block, "limits": card_limits({**card, "model_card": block})}
