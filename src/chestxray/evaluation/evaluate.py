"""Honest evaluation of a run: thresholds from the validation split, metrics with patient-bootstrap CIs on the
evaluated split, and every table and plot written into RUN/eval/.

RUN/eval/ holds predictions.csv, val_predictions.csv, roc/<finding>.csv (fpr, tpr, threshold), metrics.json,
summary.csv, copies of the training history (training_metrics.csv from RUN/metrics.csv, per step;
training_history.csv from RUN/history.csv, per epoch) and the PNG plots named in PLOTS.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from chestxray.data.tasks import DECISION_RULE, is_multiclass
from chestxray.errors import ConfigError, DataError, DiskFullError
from chestxray.evaluation import plots
from chestxray.evaluation.metrics import Summary, summarize, undefined_reason
from chestxray.evaluation.multiclass import MulticlassMetrics, multiclass_summary
from chestxray.evaluation.source_probe import METHOD
from chestxray.evaluation.thresholds import parse_method, thresholds_from_frame
from chestxray.files import (
    atomic_folder,
    atomic_path,
    disk_full,
    disk_full_message,
    remove_leftovers,
    write_csv,
    write_json,
)

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
PLOTS = {
    "history": "history.png",
    "roc": "roc_curves.png",
    "pr": "pr_curves.png",
    "confusion": "confusion.png",
    "auroc": "auroc_ci.png",
    "calibration": "calibration.png",
}


@dataclass
class EvalResult:
    """What an evaluation produced: where, on which split, the thresholds used and the metric summary."""

    eval_dir: Path
    split: str
    labels: list[str]
    thresholds: dict[str, float]
    threshold_method: str
    tta: str
    summary: Summary
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # caveats the user should read (e.g. not the training data)
    multiclass: MulticlassMetrics | None = None  # accuracy, balanced accuracy, K x K confusion (multiclass tasks)
    by_source: dict[str, Summary] = field(default_factory=dict)  # a multi-source dataset: each source alone
    source_probe: pd.DataFrame | None = None  # how well the model's features tell the sources apart

    @property
    def macro_auroc(self) -> float | None:
        """Macro AUROC over findings where it is defined (the single finding's AUROC for a binary task)."""
        rows = [r for r in self.summary.rows if r.kind == "macro"] or self.summary.rows[:1]
        return rows[0].auroc.value


def _copy(src: str | Path, dst: Path) -> None:
    """Copy a file into the eval folder atomically (no half copy is ever seen)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _check_frame(frame: pd.DataFrame, labels: Sequence[str], what: str) -> None:
    """Raise a DataError when a predictions frame lacks a needed column or has no rows."""
    need = ["image_id", "patient_id", *labels, *(f"p_{x}" for x in labels)]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise DataError(f"{what} predictions lack column(s) {missing}; expected image_id, patient_id, labels and p_<label>")
    if frame.empty:
        raise DataError(f"{what} split has no images; it cannot be evaluated")


def roc_table(y_true: np.ndarray, y_score: np.ndarray) -> pd.DataFrame:
    """fpr, tpr, threshold of one finding's ROC curve (empty when it has no positives or no negatives)."""
    y_true, y_score = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    keep = ~np.isnan(y_true)  # a merged dataset: images that do not annotate the finding are left out
    y_true, y_score = y_true[keep], y_score[keep]
    if undefined_reason(y_true) is not None:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    fpr, tpr, thr = roc_curve(y_true, y_score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def evaluate_predictions(
    val: pd.DataFrame,
    scored: pd.DataFrame,
    labels: Sequence[str],
    out_dir: str | Path,
    split: str = "test",
    threshold_method: str = "youden",
    tta: str = "none",
    history: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    task: str = "multilabel",
    before_commit: Callable[[EvalResult], None] | None = None,
    threshold_sources: Sequence[str] | None = None,
) -> EvalResult:
    """Choose thresholds on `val`, apply them to `scored` (the evaluated split) and write every output to out_dir.

    Only validation labels reach the threshold choice; the evaluated split's labels are used for metrics only.
    A multiclass task has no thresholds: the decision is the argmax class, and metrics add accuracy, balanced
    accuracy and the K x K confusion matrix (metrics.json 'multiclass', confusion.png).
    out_dir is written as a whole (chestxray.files.atomic_folder): a killed evaluation leaves the previous folder
    or none, never a mix. `before_commit` runs on the finished result (still in the temporary folder) before it
    replaces out_dir. A multi-source dataset (a `source` column) is also summarised per source (by_source;
    metrics.json 'by_source', summary_by_source.csv), each finding only where annotated; `threshold_sources` keeps
    the validation images of those sources for the threshold choice (a run trained on some sources chooses its
    thresholds on its own validation images).
    """
    labels = list(labels)
    method = parse_method(threshold_method)
    _check_frame(val, labels, "validation")
    _check_frame(scored, labels, split)
    multi = is_multiclass(task)
    if split == "val" and not multi:
        log.warning("evaluating on the validation split, where the thresholds were chosen: metrics are optimistic")
    if threshold_sources and "source" in val:
        val = val[val["source"].isin(list(threshold_sources))]
    thresholds = {} if multi else thresholds_from_frame(val, labels, method)
    method = DECISION_RULE if multi else f"{method} on val"
    y_true = scored[labels].to_numpy()
    y_score = scored[[f"p_{x}" for x in labels]].to_numpy()
    patients = scored["patient_id"].astype(str).tolist()
    mc = None
    if multi:
        summary, mc = multiclass_summary(y_true, y_score, labels, patients, n_boot=n_boot, seed=seed)
    else:
        summary = summarize(y_true, y_score, labels, patients, thresholds, n_boot=n_boot, seed=seed)
    by_source = {} if multi else source_summaries(scored, labels, thresholds, n_boot, seed)
    extra = {**(extra or {}), **({"threshold_sources": list(threshold_sources)} if threshold_sources else {}),
             **({"by_source": {k: v.to_dict() for k, v in by_source.items()}} if by_source else {})}
    with atomic_folder(out_dir) as out:
        result = _write_outputs(out, val, scored, labels, summary, mc, thresholds, method, split, task, tta,
                                history, extra)
        result.by_source = by_source
        if by_source:
            write_csv(out / "summary_by_source.csv", by_source_frame(by_source))
        if before_commit is not None:
            before_commit(result)
    final = Path(out_dir)
    return dataclasses.replace(result, eval_dir=final,
                               plots={k: final / p.relative_to(out) for k, p in result.plots.items()})


def source_summaries(scored: pd.DataFrame, labels: Sequence[str], thresholds: dict[str, float], n_boot: int,
                     seed: int) -> dict[str, Summary]:
    """A Summary per source of a multi-source predictions frame (column `source`, two or more values), each finding
    over that source's images that annotate it; {} otherwise."""
    if "source" not in scored or scored["source"].nunique() < 2:
        return {}
    out = {}
    for name, part in scored.groupby("source", sort=True):
        out[str(name)] = summarize(part[list(labels)].to_numpy(dtype=float),
                                   part[[f"p_{x}" for x in labels]].to_numpy(), list(labels),
                                   part["patient_id"].astype(str).tolist(), thresholds, n_boot=n_boot, seed=seed)
    return out


def by_source_frame(by_source: dict[str, Summary]) -> pd.DataFrame:
    """summary_by_source.csv: every source's summary rows with a leading `source` column."""
    return pd.concat([s.to_frame().assign(source=name)[["source", *s.to_frame().columns]]
                      for name, s in by_source.items()], ignore_index=True)


def _write_outputs(out: Path, val: pd.DataFrame, scored: pd.DataFrame, labels: list[str], summary: Summary,
                   mc: MulticlassMetrics | None, thresholds: dict[str, float], method: str, split: str, task: str,
                   tta: str, history: str | Path | None, extra: dict[str, Any] | None) -> EvalResult:
    """Every table, metrics.json and plot of an evaluation into the (empty) folder `out`."""
    y_true = scored[labels].to_numpy(dtype=float)
    y_score = scored[[f"p_{x}" for x in labels]].to_numpy()
    write_csv(out / "predictions.csv", scored)
    write_csv(out / "val_predictions.csv", val)
    for j, name in enumerate(labels):
        write_csv(out / "roc" / f"{name}.csv", roc_table(y_true[:, j], y_score[:, j]))
    write_csv(out / "summary.csv", summary.to_frame())
    write_json(out / "metrics.json", {
        "split": split,
        "labels": labels,
        "task": task,
        "threshold_method": method,
        "thresholds": thresholds,
        "tta": tta,
        "n_val_images": len(val),
        "evaluated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
        **summary.to_dict(),
        **({"multiclass": mc.to_dict()} if mc else {}),
    })
    made = {
        "roc": plots.plot_roc_grid(y_true, y_score, labels, out / PLOTS["roc"], thresholds),
        "pr": plots.plot_pr_grid(y_true, y_score, labels, out / PLOTS["pr"], thresholds),
        "confusion": (plots.plot_confusion_matrix(mc.confusion, labels, out / PLOTS["confusion"]) if mc
                      else plots.plot_confusion_grid(summary, out / PLOTS["confusion"])),
        "auroc": plots.plot_auroc_bars(summary, out / PLOTS["auroc"]),
        "calibration": plots.plot_calibration(y_true, y_score, labels, out / PLOTS["calibration"]),
    }
    if history is not None and Path(history).exists():
        _copy(history, out / "training_metrics.csv")
        made["history"] = plots.plot_history(pd.read_csv(history), out / PLOTS["history"])
    elif history is not None:
        log.warning("no training history at %s; the loss/AUROC plot is skipped", history)
    return EvalResult(out, split, labels, thresholds, method, tta, summary, made, multiclass=mc)


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    tta: str = "none",
    threshold_method: str = "youden",
    batch_size: int = 64,
    n_boot: int = 1000,
    seed: int = 0,
    prepared: str | Path | None = None,
    num_workers: int = 0,
    device: str | None = None,
    verify_checksums: bool | None = None,
    ood: bool = True,
    engine: str = "auto",
) -> EvalResult:
    """Predict val and `split` with RUN/bundle, choose thresholds on val, store them in the card, write RUN/eval/.

    `prepared` defaults to the folder recorded in the bundle card. The shards of both splits are checked first:
    sizes always, sha256 when `verify_checksums` (None: for a local folder, not for a URL). `ood` also fits the
    bundle's out-of-distribution reference on the train and val splits (chestxray.evaluation.ood_fit:
    ood.safetensors + ood.json beside the weights), which predict and serve read. `engine`: what runs the network
    (chestxray.inference.engines: ONNX Runtime on the CPU by default, PyTorch on a GPU).
    """
    from chestxray.data.sampling import split_sources
    from chestxray.data.shards import read_manifest
    from chestxray.evaluation.thresholds import store_thresholds
    from chestxray.evaluation.validity import findings_block
    from chestxray.inference.engines import bundle_backend
    from chestxray.inference.predict import fingerprint_note, predict_split
    from chestxray.inference.runtime import check_engine
    from chestxray.inference.tta import check_tta
    from chestxray.locks import folder_lock
    from chestxray.models.bundle import CARD, load_bundle, read_card, update_card
    from chestxray.models.model_card import model_card

    method = parse_method(threshold_method)  # fail fast on bad options, before loading anything
    check_tta(tta)
    check_engine(engine)
    run = Path(run_dir)
    if not (run / "bundle").is_dir():
        raise DataError(f"{run}: no bundle/ folder; is this a training run folder (chestxray train ... writes one)?")
    bundle = load_bundle(run / "bundle")
    labels = list(bundle.labels)
    verify = {True: "checksums", False: "sizes", None: "auto"}[verify_checksums]
    backend = bundle_backend(bundle, device, engine)  # one graph (or network) for val, the split and the OOD fit
    kwargs = dict(batch_size=batch_size, tta=tta, num_workers=num_workers, verify=verify, backend=backend)
    source = str(prepared or bundle.card.get("prepared"))
    manifest = read_manifest(source)
    val = predict_split(bundle, prepared, "val", **kwargs)
    probe = None
    if split != "val" and len(split_sources(manifest, split)[0]) > 1:  # the penultimate features, same forwards
        scored, probe = _scored_with_probe(bundle, prepared, split, kwargs, tta, seed)
    else:
        scored = val if split == "val" else predict_split(bundle, prepared, split, **kwargs)
    note = fingerprint_note(bundle, manifest, source)
    if note:  # its val split would re-choose, and overwrite, the thresholds the run chose on its own validation
        raise ConfigError(f"{note}; evaluating on it here would overwrite the bundle's thresholds and metrics. Score "
                          f"it as external data instead: chestxray evaluate {run} --data {source} (in Python: "
                          "chestxray.evaluate_external), which keeps the bundle as it is")
    trained = bundle.card.get("data_fingerprint")
    extra = {"run": str(run), "bundle": str(bundle.path), "prepared": source, "data_fingerprint": trained,
             "prepared_fingerprint": manifest.get("fingerprint"),
             "same_data_as_training": None if not trained else trained == manifest.get("fingerprint")}
    task = str(bundle.card.get("task") or "multilabel")

    if probe is not None:
        extra["source_probe"] = {"method": METHOD, "rows": probe.to_dict(orient="records")}

    def finish(result: EvalResult) -> None:  # inside the new eval folder, before it replaces the old one
        if (run / "history.csv").exists():
            _copy(run / "history.csv", result.eval_dir / "training_history.csv")
        if probe is not None:
            write_csv(result.eval_dir / "source_probe.csv", probe)
            result.source_probe = probe
        headline = {r.name: r.auroc.value for r in result.summary.rows}
        evaluation = {"split": split, "tta": tta, "macro_auroc": result.macro_auroc, "auroc": headline,
                      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if result.by_source:  # each source alone, where it annotates (a merged dataset)
            evaluation["by_source"] = {k: {r.name: r.auroc.value for r in v.rows if r.kind == "finding" and r.n}
                                       for k, v in result.by_source.items()}
        if result.multiclass is not None:
            evaluation.update(accuracy=result.multiclass.accuracy.value,
                              balanced_accuracy=result.multiclass.balanced_accuracy.value)
        card = read_card(bundle.path)
        metrics = {**card.get("metrics", {}), "evaluation": evaluation}  # training's stays
        findings = findings_block(val, result.summary, labels, split, result.multiclass is not None)
        described = model_card({**card, "findings": findings})  # the limits now say what was measured
        if result.multiclass is not None:  # no thresholds: the card says the decision rule and the TTA scored with
            update_card(bundle.path, thresholds=None, threshold_method=DECISION_RULE, threshold_tta=tta,
                        metrics=metrics, findings=findings, model_card=described)
        else:  # one card write: thresholds, their TTA, which are validated and the metrics they came with
            store_thresholds(bundle.path, result.thresholds, method, tta, metrics=metrics, findings=findings,
                             model_card=described)

    with folder_lock(run, "evaluate"):
        remove_leftovers(bundle.path / CARD)  # a card update cut short by a kill left its temporary file
        try:
            result = evaluate_predictions(val, scored, labels, run / EVAL_DIR, split, method, tta,
                                          run / "metrics.csv", n_boot, seed, extra, task=task, before_commit=finish,
                                          threshold_sources=trained_sources(bundle.card))
        except Exception as exc:  # outputs go to a temporary folder and the card is replaced whole: nothing changed
            if disk_full(exc) is None:
                raise
            raise DiskFullError(disk_full_message(run, exc, f"nothing was changed: the card's thresholds and "
                                                  f"{run / EVAL_DIR} are as before this evaluation; free some space "
                                                  "and run evaluate again")) from None
        if ood:
            from chestxray.evaluation.ood_fit import fit_ood

            fit_ood(bundle, prepared, tta=tta, batch_size=batch_size, backend=backend)
    result.notes.extend([note] if note else [])
    log.info("evaluated %s on %s: macro AUROC %s", run, split, result.macro_auroc)
    _to_mlflow(run, result)
    return result


def _scored_with_probe(bundle: Any, prepared: Any, split: str, kwargs: dict[str, Any], tta: str,
                       seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A split's predictions, and how well the model's penultimate features tell its sources apart
    (chestxray.evaluation.source_probe), read during the same forwards when the backend can tap them."""
    from chestxray.evaluation.ood_fit import split_features
    from chestxray.evaluation.source_probe import source_probe
    from chestxray.inference.ood import PENULTIMATE, TTA_VIEWS, mean_over_views
    from chestxray.inference.predict import predict_split

    backend = kwargs.get("backend")
    if backend is not None and getattr(backend, "tap", None) is not None:
        with backend.tap() as store:
            scored = predict_split(bundle, prepared, split, **kwargs)
        features = mean_over_views(store, TTA_VIEWS[tta])[PENULTIMATE]
    else:
        scored = predict_split(bundle, prepared, split, **kwargs)
        features = split_features(bundle, prepared, split, tta, kwargs.get("batch_size", 64))[PENULTIMATE]
    if "source" not in scored or len(features) != len(scored):
        return scored, None
    return scored, source_probe(features, scored["source"].to_numpy(), scored["patient_id"].to_numpy(), seed)


def trained_sources(card: dict[str, Any]) -> list[str] | None:
    """The sources a run trained (and validated) on when it used only some of its dataset's sources, else None."""
    info = card.get("sources") or {}
    chosen, every = info.get("trained_on") or [], info.get("all") or []
    return list(chosen) if chosen and set(chosen) != set(every) else None


def _to_mlflow(run: Path, result: EvalResult) -> None:
    """Mirror the evaluation into the run's MLflow run; a store that cannot be reached costs a warning, not the files."""
    from chestxray.evaluation.tracking import log_evaluation

    try:
        log_evaluation(run, result)
    except Exception as exc:  # noqa: BLE001 - RUN/eval is written; MLflow is a mirror of it
        note = f"could not log the evaluation to MLflow ({type(exc).__name__}: {exc}); RUN/eval/ holds all of it"
        log.warning(note)
        result.notes.append(note)
