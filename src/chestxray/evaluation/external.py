"""External validation: score a trained run on a dataset it never saw, without changing the run's bundle.

`evaluate_external(RUN, DATA)`:
- DATA is a catalog folder (any split; an all-test catalog, `--ratios 0,0,1`, is the usual case) or a prepared
  folder made as the run's training data was (size, resize, ...); its images go through the one scoring path
  (catalog files: load_pixels, decoded and resized as prepare does; prepared shards: the stored pixels);
- labels are mapped through the vocabulary (chestxray.data.labelmap): each model output scores its most specific
  vocabulary label, read from DATA's own labels source by source; an output DATA does not annotate is left out, and
  a model none of whose outputs can be read from DATA is refused with the mapping in words;
- thresholds are the run's own (chosen on its validation split, stored in the card); beside them, what the same
  method would choose at the new site (on DATA's validation split when it has one, else on the evaluated images —
  optimistic, and labelled so), with sensitivity and specificity at both, so the drop is visible;
- patient overlap with the run's training and validation images is checked by patient id and by image content (a
  hash of the model-input pixels): an evaluated image identical to a training/validation image is refused
  (`overlap='refuse'`), left out with its patient (`'drop'`), or kept with a note (`'report'`); ids that match
  without any identical image are reported (two collections may number patients alike);
- metrics are the evaluation's (patient-bootstrap intervals, the one minimum-sample rule), overall and per source;
  outputs go to RUN/external/NAME/ (written whole); the bundle card and RUN/eval/ are never touched.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chestxray.errors import ConfigError, DataError
from chestxray.evaluation.evaluate import by_source_frame, source_summaries
from chestxray.evaluation.metrics import Summary, summarize, threshold_counts
from chestxray.evaluation.thresholds import choose_threshold, parse_method
from chestxray.files import atomic_folder, write_csv, write_json

log = logging.getLogger(__name__)

EXTERNAL_DIR = "external"
OVERLAP = ("refuse", "drop", "report")


@dataclass
class ExternalResult:
    """An external evaluation: where it was written, the label mapping, metrics overall and per source, the run's
    thresholds beside the site's, the overlap found and notes to read."""

    out_dir: Path
    data: str
    mapping: dict[str, str]
    summary: Summary
    by_source: dict[str, Summary]
    thresholds: pd.DataFrame
    overlap: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file() or "://" in str(path)


def _name(data: str | Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(data).rstrip("/")).name) or "data"


def score_external(bundle: Any, data: str | Path, split: str | None = None, tta: str | None = None,
                   batch_size: int = 64) -> tuple[pd.DataFrame, list[str], str]:
    """Every usable image of DATA (or of one split) scored by the bundle: image_id, patient_id, split, source,
    pixel_hash, DATA's own label columns (0/1/NaN) and p_<model label>; with DATA's labels and its default source
    name. Unreadable catalog images are left out with a warning."""
    from chestxray.inference.engines import bundle_scorer
    from chestxray.inference.predict import predict_split
    from chestxray.inference.stream import iter_predictions

    name = _name(data)
    if is_prepared(data):
        from chestxray.data.shards import read_manifest

        manifest = read_manifest(data)
        splits = [split] if split else [s for s, e in manifest["splits"].items() if e["count"]]
        frames = [predict_split(bundle, data, s, batch_size=batch_size, tta=tta, hashes=True, labels_fit=False)
                  .assign(split=s) for s in splits]
        return pd.concat(frames, ignore_index=True), list(manifest["labels"]), str(manifest.get("source") or name)
    from chestxray.data.catalog import load_catalog

    catalog = load_catalog(data)
    table = catalog.table.reset_index(drop=True)
    if split:
        table = table[table["split"] == split].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{data}: no images in split {split!r}; leave out --split to evaluate every image")
    scorer = bundle_scorer(bundle, tta=tta)  # the engine for this machine (onnxruntime on a CPU)
    scored = pd.concat(list(iter_predictions(scorer, [Path(p) for p in table["path"]], batch_size=batch_size,
                                             hashes=True)), ignore_index=True)
    ok = (scored["status"] == "ok").to_numpy()
    for reason in scored.loc[~ok, "reason"].head(10):
        log.warning("external image left out: %s", reason)
    if not ok.any():
        raise DataError(f"{data}: none of the {len(table)} images could be read; see the reasons above")
    keep = ["image_id", "patient_id", "split", *(["source"] if "source" in table else []), *catalog.labels]
    frame = table.loc[ok, keep].reset_index(drop=True)
    frame.insert(2, "pixel_hash", scored.loc[ok, "pixel_hash"].to_numpy())
    probs = scored.loc[ok, [f"p_{x}" for x in bundle.labels]].reset_index(drop=True)
    return pd.concat([frame, probs], axis=1), list(catalog.labels), name


def training_index(card: dict[str, Any]) -> tuple[set[str], set[str], str]:
    """Patient ids and pixel hashes of the images the run trained and validated on (its prepared train and val
    splits, only the sources it trained on), and a note when they cannot be read."""
    from chestxray.data.shards import iter_split_samples, read_manifest
    from chestxray.inference.scoring import pixel_hash

    prepared = card.get("prepared")
    trained_on = set((card.get("sources") or {}).get("trained_on") or [])
    try:
        manifest = read_manifest(prepared)
    except (DataError, TypeError):
        return set(), set(), (f"the run's training data ({prepared}) cannot be read here: patient overlap and "
                              "identical images were NOT checked")
    if manifest.get("fingerprint") != card.get("data_fingerprint"):
        return set(), set(), (f"{prepared} is no longer the data the run was trained on: patient overlap and "
                              "identical images were NOT checked")
    patients, hashes = set(), set()
    for split in ("train", "val"):
        if not manifest["splits"].get(split, {}).get("count"):
            continue
        for sample in iter_split_samples(prepared, split, manifest):
            if trained_on and sample["source"] and sample["source"] not in trained_on:
                continue
            patients.add(str(sample["patient_id"]))
            hashes.add(pixel_hash(sample["image"]))
    return patients, hashes, ""


def _bare(patient: str) -> str:
    """A patient id without a merged catalog's 'SOURCE:' prefix."""
    return patient.split(":", 1)[1] if ":" in patient else patient


def check_overlap(frame: pd.DataFrame, card: dict[str, Any], policy: str, data: str) -> tuple[pd.DataFrame, dict]:
    """Apply the overlap policy (see the module docstring); returns the frame to evaluate and what was found."""
    if policy not in OVERLAP:
        raise ConfigError(f"--overlap {policy!r} is not one of {list(OVERLAP)}")
    patients, hashes, note = training_index(card)
    report: dict[str, Any] = {"policy": policy, "checked": not note, "note": note}
    if note:
        return frame, report
    same_image = frame["pixel_hash"].isin(hashes).to_numpy()
    known = {_bare(p) for p in patients} | patients
    ids = frame["patient_id"].astype(str)
    same_id = (ids.isin(known) | ids.map(_bare).isin(known)).to_numpy()
    leaked_patients = set(ids[same_image])
    report.update(identical_images=int(same_image.sum()), patients_with_identical_images=len(leaked_patients),
                  patient_ids_in_training=int(ids[same_id].nunique()),
                  examples=sorted(set(frame.loc[same_image, "image_id"].astype(str)))[:5])
    if same_image.any() and policy == "refuse":
        raise DataError(f"{data}: {int(same_image.sum())} image(s) of {len(leaked_patients)} patient(s) are identical "
                        f"to images the run trained or validated on (e.g. {report['examples'][:3]}); an external "
                        "evaluation on them measures memory, not generalisation. Use data the run never saw, or pass "
                        "--overlap drop (leave those patients out) or --overlap report (keep them, with a warning)")
    if policy == "drop":
        out = ~(ids.isin(leaked_patients).to_numpy() | same_id)
        report["dropped_images"] = int((~out).sum())
        frame = frame[out].reset_index(drop=True)
        if frame.empty:
            raise DataError(f"{data}: every image belongs to a patient the run trained or validated on; nothing left "
                            "to evaluate")
    return frame, report


def _site_thresholds(frame: pd.DataFrame, labels: list[str], method: Any) -> tuple[dict[str, float], dict[str, str]]:
    """What the run's threshold method picks at the new site, per label: on the site's own validation split when
    it has one holding both classes of the label, else on the evaluated images themselves (optimistic: chosen
    where measured, and said so)."""
    from chestxray.evaluation.metrics import undefined_reason

    out, how = {}, {}
    val = frame[frame["split"] == "val"] if frame["split"].nunique() > 1 else frame.iloc[0:0]
    for name in labels:
        part, where = val, "site validation split"
        y = part[name].to_numpy(dtype=float)
        if undefined_reason(y[~np.isnan(y)]) is not None:
            part, where = frame, "the evaluated images themselves (optimistic: chosen where measured)"
        y, s = part[name].to_numpy(dtype=float), part[f"p_{name}"].to_numpy()
        keep = ~np.isnan(y)
        out[name], how[name] = choose_threshold(y[keep], s[keep], method), where
    return out, how


def _threshold_table(frame: pd.DataFrame, labels: list[str], run: dict[str, float], site: dict[str, float],
                     how: dict[str, str]) -> pd.DataFrame:
    """Per label: the run's threshold and the site's, each with sensitivity and specificity on the evaluated images
    (the site's validation images left out where they chose the site threshold)."""
    rows = []
    for name in labels:
        part = frame[frame["split"] != "val"] if how[name].startswith("site validation") else frame
        y, s = part[name].to_numpy(dtype=float), part[f"p_{name}"].to_numpy()
        keep = ~np.isnan(y)
        a = threshold_counts(y[keep], s[keep], run[name]) if name in run else None
        b = threshold_counts(y[keep], s[keep], site[name])
        rows.append({"label": name, "images": int(keep.sum()), "positives": int(np.nansum(y)),
                     "run_threshold": run.get(name), "run_sensitivity": a.sensitivity if a else None,
                     "run_specificity": a.specificity if a else None, "site_threshold": site[name],
                     "site_sensitivity": b.sensitivity, "site_specificity": b.specificity,
                     "site_threshold_from": how[name]})
    return pd.DataFrame(rows)


def evaluate_external(run_dir: str | Path, data: str | Path, *, split: str | None = None,
                      label_map: str | Path | None = None, overlap: str = "refuse", name: str | None = None,
                      batch_size: int = 64, n_boot: int = 1000, seed: int = 0) -> ExternalResult:
    """Score RUN on DATA it never saw (see the module docstring); writes RUN/external/NAME and returns the result.
    The TTA is the one the run's thresholds were chosen with."""
    from chestxray.data.labelmap import model_targets, read_label_map, truth_for
    from chestxray.inference.predict import as_bundle
    from chestxray.models.bundle import CARD

    run = Path(run_dir)
    bundle = as_bundle(run)
    card_before = (bundle.path / CARD).read_bytes()
    card = bundle.card
    if not card.get("thresholds"):
        raise ConfigError(f"{run}: the bundle has no thresholds yet; run 'chestxray evaluate {run}' first (its own "
                          "validation split chooses them), then evaluate it on other data")
    mapping = read_label_map(label_map)
    targets, skipped = model_targets(list(bundle.labels), mapping)
    frame, data_labels, default_source = score_external(bundle, data, split, batch_size=batch_size)
    sources = frame["source"].astype(str) if "source" in frame else pd.Series([default_source] * len(frame))
    values = frame[data_labels].to_numpy(dtype=float)
    truth = truth_for(targets, values, data_labels, sources.tolist(), mapping, str(data))
    usable = [k for k in range(len(targets)) if not np.isnan(truth[:, k]).all()]
    if not usable:
        explained = "; ".join(f"{m!r} scores {t!r}" for m, t in targets.items()) or "none of them scores a finding"
        raise DataError(f"{data}: none of the model's labels {list(bundle.labels)} can be read from the data's "
                        f"labels {data_labels} through the label map ({explained}; the data annotates none of "
                        "these). Pass --map FILE mapping the data's labels onto the model's (see docs/datasets.md)")
    labels = [list(targets)[k] for k in usable]
    absent = [m for k, m in enumerate(targets) if k not in usable]
    if absent:
        skipped.append(f"{len(absent)} label(s) the data does not annotate: {', '.join(absent)}")
    out = frame[["image_id", "patient_id", "split", "pixel_hash"]].copy()
    out["split"] = out["split"].fillna("").astype(str)
    out["source"] = sources.to_numpy()
    for k in usable:
        out[list(targets)[k]] = truth[:, k]
    for m in labels:
        out[f"p_{m}"] = frame[f"p_{m}"].to_numpy()
    out, found = check_overlap(out, card, overlap, str(data))
    notes = [found["note"]] if found["note"] else []
    if found.get("identical_images") and overlap == "report":
        notes.append(f"{found['identical_images']} evaluated image(s) are identical to training/validation images: "
                     "these metrics are optimistic")
    elif found.get("patient_ids_in_training") and overlap != "drop":
        notes.append(f"{found['patient_ids_in_training']} patient id(s) also occur in the run's training/validation "
                     "data (no identical image): the same people if DATA comes from the same collection")
    run_thresholds = {m: float(card["thresholds"][m]) for m in labels if m in card["thresholds"]}
    method = parse_method(str(card.get("threshold_method") or "youden").split(" on ")[0])
    site, how = _site_thresholds(out, labels, method)
    y = out[labels].to_numpy(dtype=float)
    s = out[[f"p_{m}" for m in labels]].to_numpy()
    summary = summarize(y, s, labels, out["patient_id"].astype(str).tolist(), run_thresholds, n_boot=n_boot, seed=seed)
    by_source = source_summaries(out, labels, run_thresholds, n_boot, seed)
    table = _threshold_table(out, labels, run_thresholds, site, how)
    folder = run / EXTERNAL_DIR / (name or _name(data) + (f"-{split}" if split else ""))
    with atomic_folder(folder) as tmp:
        write_csv(tmp / "predictions.csv", out)
        write_csv(tmp / "summary.csv", summary.to_frame())
        write_csv(tmp / "thresholds.csv", table)
        if by_source:
            write_csv(tmp / "summary_by_source.csv", by_source_frame(by_source))
        write_json(tmp / "metrics.json", {
            "data": str(data), "split": split or "all", "run": str(run), "bundle": str(bundle.path),
            "mapping": {m: targets[m] for m in labels}, "not_evaluated": skipped, "label_map": mapping.origin,
            "thresholds_from": f"the run's own validation ({card.get('threshold_method')})",
            "site_thresholds_from": how, "tta": card.get("threshold_tta", "none"), "overlap": found, "notes": notes,
            **summary.to_dict(), "by_source": {k: v.to_dict() for k, v in by_source.items()},
            "thresholds": table.to_dict(orient="records")})
    if (bundle.path / CARD).read_bytes() != card_before:  # an internal invariant: external data never edits it
        raise AssertionError(f"{bundle.path / CARD} changed during an external evaluation")
    log.info("external evaluation of %s on %s: %d images, %d labels", run, data, len(out), len(labels))
    return ExternalResult(folder, str(data), {m: targets[m] for m in labels}, summary, by_source, table, found,
                          notes + [f"not evaluated: {x}" for x in skipped])


def read_external(folder: str | Path) -> dict[str, Any]:
    """metrics.json of an external evaluation folder."""
    return json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))
