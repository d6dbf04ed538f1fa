"""compare-runs: Obuchowski's clustered test + paired bootstrap on two evaluated runs, in plain words, the
minimum-sample rule's words where a finding is short of patients; mismatches are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.evaluation.compare_runs import compare_runs
from chestxray.evaluation.statistics import CLUSTERED_TEST, clustered_test


def _eval_folder(run: Path, frame: pd.DataFrame, labels: list[str], split: str = "test") -> Path:
    (run / "eval").mkdir(parents=True)
    frame.to_csv(run / "eval" / "predictions.csv", index=False)
    (run / "eval" / "metrics.json").write_text(json.dumps({"labels": labels, "split": split}))
    return run


def _frames(n: int, labels: list[str], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(labels))) < 0.35).astype(np.uint8)
    base = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "patient_id": [f"P{i // 2}" for i in range(n)]})
    base[labels] = y
    good, weak = base.copy(), base.copy()
    noise = rng.normal(size=y.shape)
    good[[f"p_{x}" for x in labels]] = 1 / (1 + np.exp(-(noise + 2.0 * y)))
    weak[[f"p_{x}" for x in labels]] = 1 / (1 + np.exp(-(noise + rng.normal(size=y.shape) + 0.7 * y)))
    return good, weak


def test_binary_comparison_in_plain_words(tmp_path: Path) -> None:
    good, weak = _frames(400, ["PNEUMONIA"], seed=0)
    a = _eval_folder(tmp_path / "finetune", good, ["PNEUMONIA"])
    b = _eval_folder(tmp_path / "frozen", weak.sample(frac=1, random_state=0), ["PNEUMONIA"])  # order differs
    result = CliRunner().invoke(app, ["compare-runs", str(a), str(b), "--n-boot", "200", "--out",
                                      str(tmp_path / "cmp.csv")])
    assert result.exit_code == 0, result.output
    d = clustered_test(good["PNEUMONIA"], good["p_PNEUMONIA"], weak["p_PNEUMONIA"], good["patient_id"])
    line = [x for x in result.output.splitlines() if x.startswith("finetune vs frozen:")][0]
    assert line.startswith(f"finetune vs frozen: {d.diff:+.3f} AUROC [+0.")
    assert line.endswith("p < 0.001 (Obuchowski, patients as clusters)")  # a clear case
    assert f"p: {CLUSTERED_TEST}" in result.output
    table = pd.read_csv(tmp_path / "cmp.csv")
    assert table["p"].iloc[0] == pytest.approx(d.p, rel=1e-9) and 0 < table["low"].iloc[0] < d.diff < table["high"].iloc[0]
    assert table["test"].iloc[0] == CLUSTERED_TEST and table["positive_patients"].iloc[0] >= 10
    assert json.loads((tmp_path / "cmp.json").read_text())["headline"] == line


def test_multilabel_comparison_has_holm_and_macro(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    good, weak = _frames(300, labels, seed=1)
    cmp = compare_runs(_eval_folder(tmp_path / "x", good, labels), _eval_folder(tmp_path / "y", weak, labels),
                       n_boot=100)
    t = cmp.table.set_index("finding")
    assert list(t.index) == [*labels, "macro"]
    assert ((t.loc[labels, "p_holm"] >= t.loc[labels, "p"]) & (t.loc[labels, "p_holm"] <= 1)).all()
    assert t.loc["macro", "diff"] == pytest.approx(np.mean(t.loc[labels, "diff"])) and 0 <= t.loc["macro", "p"] < 0.05
    assert t.loc["macro", "test"].startswith("Obuchowski clustered test of the macro mean") and \
        t.loc["macro", "low"] < t.loc["macro", "diff"] < t.loc["macro", "high"]
    assert "Holm-corrected over the 3 findings tested (family: the findings of this pair)" in cmp.method
    assert cmp.headline().startswith("x vs y: +") and cmp.headline().endswith("(Obuchowski, patients as clusters)")


def test_runs_on_different_images_or_unevaluated_are_refused(tmp_path: Path) -> None:
    good, weak = _frames(100, ["PNEUMONIA"], seed=2)
    a = _eval_folder(tmp_path / "a", good, ["PNEUMONIA"])
    b = _eval_folder(tmp_path / "b", weak.iloc[:90], ["PNEUMONIA"])
    result = CliRunner().invoke(app, ["compare-runs", str(a), str(b)])
    assert result.exit_code == 1 and "scored different images (10 only in a, 0 only in b)" in result.output
    result = CliRunner().invoke(app, ["compare-runs", str(a), str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "run chestxray evaluate" in result.output


def test_findings_short_of_patients_get_words_and_the_macro_is_split(tmp_path: Path) -> None:
    """A finding with 3 positive patients gets no p-value or interval but the rule's words (in the table, the CSV
    and the printed sentence); Holm's family is the findings tested; the macro over all findings has no test and
    'macro_eligible' tests the mean over the findings that pass."""
    labels = ["a", "b", "rare"]
    good, weak = _frames(300, labels, seed=3)
    for frame in (good, weak):
        frame["rare"] = 0
        frame.loc[[0, 1, 10, 20], "rare"] = 1  # patients P0, P5, P10: 3 positive patients
    a, b = _eval_folder(tmp_path / "x", good, labels), _eval_folder(tmp_path / "y", weak, labels)
    cmp = compare_runs(a, b, n_boot=100)
    t = cmp.table.set_index("finding")
    assert list(t.index) == [*labels, "macro", "macro_eligible"]
    assert t.loc["rare", "test"] == "too few positive patients (3 < 10) for a test"
    assert np.isnan(t.loc["rare", "p"]) and np.isnan(t.loc["rare", "low"]) and np.isnan(t.loc["rare", "p_holm"])
    assert (t.loc["rare", "positive_patients"], t.loc["rare", "negative_patients"]) == (3, 149)  # P0: both images +
    assert not np.isnan(t.loc["rare", "diff"])
    low, high = sorted(t.loc[["a", "b"], "p"])  # Holm over a family of two: the tested findings only
    assert sorted(t.loc[["a", "b"], "p_holm"]) == pytest.approx([min(1, 2 * low), min(1, max(2 * low, high))])
    assert np.isnan(t.loc["macro", "p"]) and t.loc["macro", "test"].startswith(
        "no test: 1 of the 3 findings in the mean have too few patients (rare)")
    assert t.loc["macro_eligible", "diff"] == pytest.approx(np.mean(t.loc[["a", "b"], "diff"]))
    assert t.loc["macro_eligible", "test"].endswith("over 2 findings (a, b)") and t.loc["macro_eligible", "p"] < 0.05
    assert cmp.headline_row() == "macro_eligible"
    assert cmp.sentence("rare") == f"x vs y (rare): {t.loc['rare', 'diff']:+.3f} AUROC; too few positive patients " \
                                   "(3 < 10) for a test"
    result = CliRunner().invoke(app, ["compare-runs", str(a), str(b), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert "* rare: too few positive patients (3 < 10) for a test" in result.output and "too few*" in result.output
    assert max(len(line) for line in result.output.splitlines() if "│" in line or "—" in line) <= 80
    assert cmp.headline() == f"x vs y (macro over the findings with enough patients: a, b): {t.loc['macro_eligible', 'diff']:+.3f} AUROC [" + \
        f"{t.loc['macro_eligible', 'low']:+.3f}, {t.loc['macro_eligible', 'high']:+.3f}], p < 0.001 (Obuchowski, " \
        "patients as clusters)"
