"""compare-runs: paired DeLong + bootstrap on two evaluated runs, in plain words; mismatches are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.evaluation.compare_runs import compare_runs
from chestxray.evaluation.statistics import delong_test


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
    d = delong_test(good["PNEUMONIA"], good["p_PNEUMONIA"], weak["p_PNEUMONIA"])
    line = [x for x in result.output.splitlines() if x.startswith("finetune vs frozen:")][0]
    assert line.startswith(f"finetune vs frozen: {d.diff:+.3f} AUROC [+0.") and line.endswith("(DeLong)")
    assert line.endswith("p < 0.001 (DeLong)")  # a clear case
    table = pd.read_csv(tmp_path / "cmp.csv")
    assert table["p"].iloc[0] == pytest.approx(d.p, rel=1e-9) and 0 < table["low"].iloc[0] < d.diff < table["high"].iloc[0]
    assert json.loads((tmp_path / "cmp.json").read_text())["headline"] == line


def test_multilabel_comparison_has_holm_and_macro(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    good, weak = _frames(300, labels, seed=1)
    cmp = compare_runs(_eval_folder(tmp_path / "x", good, labels), _eval_folder(tmp_path / "y", weak, labels),
                       n_boot=100)
    t = cmp.table.set_index("finding")
    assert list(t.index) == [*labels, "macro"]
    assert ((t.loc[labels, "p_holm"] >= t.loc[labels, "p"]) & (t.loc[labels, "p_holm"] <= 1)).all()
    assert t.loc["macro", "diff"] == np.mean(t.loc[labels, "diff"]) and np.isnan(t.loc["macro", "p"])
    assert "Holm-corrected over 3 findings" in cmp.method
    assert cmp.headline().startswith("x vs y: +") and "paired patient bootstrap" in cmp.headline()


def test_runs_on_different_images_or_unevaluated_are_refused(tmp_path: Path) -> None:
    good, weak = _frames(100, ["PNEUMONIA"], seed=2)
    a = _eval_folder(tmp_path / "a", good, ["PNEUMONIA"])
    b = _eval_folder(tmp_path / "b", weak.iloc[:90], ["PNEUMONIA"])
    result = CliRunner().invoke(app, ["compare-runs", str(a), str(b)])
    assert result.exit_code == 1 and "scored different images (10 only in a, 0 only in b)" in result.output
    result = CliRunner().invoke(app, ["compare-runs", str(a), str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "run chestxray evaluate" in result.output
