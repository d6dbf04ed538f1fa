"""The tune report from a real Optuna study: self-contained HTML with the four plots and one row per trial."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from chestxray.report.tune_report import write_tune_report


def test_report_has_plots_and_every_trial(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name="demo-study")
    dists = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "loss": CategoricalDistribution(["bce", "focal"])}
    values = [0.61, 0.74, 0.52, 0.81, 0.66]
    for i, value in enumerate(values):
        study.add_trial(create_trial(params={"lr": 10 ** (-4 + i * 0.5), "loss": ["bce", "focal"][i % 2]},
                                     distributions=dists, value=value, intermediate_values={0: value - 0.1, 1: value},
                                     user_attrs={"run_dir": f"/x/trials/trial-{i:04d}", "epochs": 2}))
    study.add_trial(create_trial(params={"lr": 1e-5, "loss": "bce"}, distributions=dists, state=TrialState.PRUNED,
                                 intermediate_values={0: 0.3}, user_attrs={"epochs": 1}))
    path = write_tune_report(study, tmp_path / "tune_report.html", storage="sqlite:///x/study.db")
    html = path.read_text(encoding="utf-8")
    for key in ("history", "importances", "slice", "parallel"):
        assert re.search(rf'id="plot-{key}">\s*<img src="data:image/png;base64,', html), key
    rows = re.findall(r'<tr class="state-(\w+)( best)?">', html)
    assert len(rows) == 6 and rows.count(("PRUNED", "")) == 1
    assert ("COMPLETE", " best") in rows and "0.8100" in html
    assert "http://" not in html and "https://" not in html and "<link" not in html  # nothing fetched
    assert 'class="caveat">Caution: only 5 complete trials.' in html  # importances over 5 trials carry a caveat


def test_parallel_coordinate_labels_do_not_overlap() -> None:
    """Five parameters with long names: the names under the axes and each axis's tick numbers keep clear of each
    other once the figure is spread (checked on the drawn text boxes)."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    from chestxray.report.tune_report import spread_parallel

    study = optuna.create_study(direction="maximize")
    names = ["learning_rate", "weight_decay", "dropout_probability", "warmup_fraction", "label_smoothing"]
    dists = {n: FloatDistribution(1e-5, 1e-1, log=True) for n in names}
    for i in range(12):
        study.add_trial(create_trial(params={n: 10 ** (-5 + (i * (j + 2)) % 4) for j, n in enumerate(names)},
                                     distributions=dists, value=0.5 + i / 40))

    def overlaps(boxes: list) -> list[tuple[int, int]]:
        return [(a, b) for a in range(len(boxes)) for b in range(a + 1, len(boxes)) if boxes[a].overlaps(boxes[b])]

    def text_boxes(axes) -> tuple[list, list]:
        figure = axes.get_figure()
        renderer = figure.canvas.get_renderer()
        figure.draw(renderer)
        names_ = [t.get_window_extent(renderer) for t in axes.get_xticklabels() if t.get_text()]
        twins = [a for a in figure.axes if a is not axes and a.get_label() != "<colorbar>"]
        ticks = [[t.get_window_extent(renderer) for t in twin.get_yticklabels() if t.get_text()] for twin in twins]
        return names_, ticks

    with warnings.catch_warnings():  # Optuna marks the plot experimental
        warnings.simplefilter("ignore")
        crowded, spread = plot_parallel_coordinate(study), spread_parallel(plot_parallel_coordinate(study))
    names_before, ticks_before = text_boxes(crowded)
    clashes_before = len(overlaps(names_before)) + sum(
        any(a.overlaps(b) for a in left for b in right) for left, right in zip(ticks_before, ticks_before[1:]))
    names_after, ticks_after = text_boxes(spread)
    assert len(names_after) == len(names) + 1  # the objective and every parameter are named
    assert not overlaps(names_after)
    for left, right in zip(ticks_after, ticks_after[1:]):  # neighbouring axes' numbers stay apart
        assert not any(a.overlaps(b) for a in left for b in right)
    assert clashes_before > 0  # Optuna's default layout does collide here: the test would catch a regression
