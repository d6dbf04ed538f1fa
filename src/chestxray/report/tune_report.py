"""The tune report: one self-contained HTML page per Optuna study — headline cards, the best trial, the
optimisation history, parameter importances, slice and parallel-coordinate plots (matplotlib PNGs, base64) and the
table of all trials.

Stable hooks for tests: table#trials-table, figure.plot#plot-<key> (history, importances, slice, parallel).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

import chestxray
from chestxray.files import png_data_url, write_text

log = logging.getLogger(__name__)

PLOTS = {
    "history": ("plot_optimization_history", "Validation AUROC of each complete trial in order, and the best so far."),
    "importances": ("plot_param_importances", "How much of the variation in validation AUROC each parameter "
                                              "explains (Optuna's default PED-ANOVA evaluator)."),
    "slice": ("plot_slice", "Validation AUROC against each parameter's value; colour: trial number."),
    "parallel": ("plot_parallel_coordinate", "Each complete trial as a line through its parameter values, "
                                             "coloured by validation AUROC."),
}


IMPORTANCE_MIN_TRIALS = 20  # fewer complete trials: the importances are a hint, and the report says so
IMPORTANCE_CAVEAT = ("Caution: only {n} complete trial{s}. An importance is estimated from how validation AUROC "
                     "varies across the trials, so over so few it mostly reflects which values happened to be drawn "
                     "(and the noise between runs), not what matters: read it as a hint, not a ranking, until there "
                     "are {m} or more trials.")


def spread_parallel(axes: Any) -> Any:
    """Optuna's parallel-coordinate figure made readable: a width that grows with the parameters (each axis's tick
    numbers get room before the next axis) and the parameter names under the axes, slanted, ending at their tick."""
    figure = axes.get_figure()
    n_axes = len(axes.get_xticks())
    figure.set_size_inches(max(6.4, 2.0 * n_axes + 1.5), 5.0)
    for label in axes.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    return axes


def _png(axes: Any) -> str:
    """The figure holding `axes` (one Axes or an array of them) as a base64 PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt
    import numpy as np

    first = np.asarray(axes, dtype=object).ravel()[0]
    figure = first.get_figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return png_data_url(buffer.getvalue())


def _plots(study: Any) -> list[dict[str, Any]]:
    """Optuna's matplotlib plots of the study; a plot Optuna cannot draw yet says why instead."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as optuna_plots

    from optuna.trial import TrialState

    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    plots = []
    for key, (function, caption) in PLOTS.items():
        entry: dict[str, Any] = {"key": key, "caption": caption, "src": None, "missing": "", "caveat": ""}
        if key == "importances" and complete < IMPORTANCE_MIN_TRIALS:
            entry["caveat"] = IMPORTANCE_CAVEAT.format(n=complete, s="" if complete == 1 else "s",
                                                       m=IMPORTANCE_MIN_TRIALS)
        try:
            with warnings.catch_warnings():  # these functions are marked experimental; the report says nothing new
                warnings.simplefilter("ignore")
                axes = getattr(optuna_plots, function)(study)
                entry["src"] = _png(spread_parallel(axes) if key == "parallel" else axes)
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            entry["missing"] = str(exc) or type(exc).__name__
        plots.append(entry)
    return plots


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def _rows(trials: list[Any], best_number: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    names = sorted({name for t in trials for name in t.params})
    columns = ["trial", "state", "val AUROC", "epochs", "seconds", *names, "run folder"]
    rows = []
    for t in trials:
        seconds = t.duration.total_seconds() if t.duration is not None else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        value = t.value if t.value is not None else last
        cells = {"trial": t.number, "state": t.state.name,
                 "val AUROC": _cell(value), "epochs": t.user_attrs.get("epochs", ""),
                 "seconds": _cell(seconds), "run folder": Path(t.user_attrs.get("run_dir", "")).name}
        cells.update({name: _cell(t.params.get(name)) for name in names})
        rows.append({"state": t.state.name, "best": t.number == best_number, "cells": cells})
    return columns, rows


def write_tune_report(study: Any, out: str | Path, storage: str = "") -> Path:
    """Write the study's HTML report to `out` (self-contained: inline CSS, base64 PNGs)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                             TrialState.FAIL, TrialState.RUNNING)}
    cards = [{"key": "best val AUROC", "value": f"{best.value:.4f}" if best else "n/a"},
             {"key": "complete trials", "value": count[TrialState.COMPLETE]},
             {"key": "pruned trials", "value": count[TrialState.PRUNED]},
             {"key": "failed trials", "value": count[TrialState.FAIL]}]
    if count[TrialState.RUNNING]:
        cards.append({"key": "running trials", "value": count[TrialState.RUNNING]})
    columns, rows = _rows(trials, best.number if best else None)
    env = Environment(loader=PackageLoader("chestxray.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("tune_report.html.j2").render(
        study_name=study.study_name, storage=storage, version=chestxray.__version__,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cards=cards, best_number=best.number if best else None,
        best_value=f"{best.value:.4f}" if best else "", best_params={k: _cell(v) for k, v in best.params.items()}
        if best else {}, plots=_plots(study) if complete else [], columns=columns, rows=rows,
        text_columns=("state", "run folder"),
    )
    target = Path(out)
    write_text(target, html)
    log.info("wrote %s (%d trials)", target, len(trials))
    return target
