"""The tune report from a real Optuna study: self-contained HTML with the four plots and one row per trial."""

from __future__ import annotations

import re
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
