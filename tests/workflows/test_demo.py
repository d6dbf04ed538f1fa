"""The demo: the whole chain in one call, on synthetic images (fast) and with a clear error when no data is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chestxray.errors import DataError
from chestxray.workflows.demo import DemoSettings, run_demo


def test_demo_without_samples_says_how_to_point_at_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHESTXRAY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"--data DIR or CHESTXRAY_DATA=DIR.*--synthetic"):
        run_demo(tmp_path / "out")


def test_synthetic_demo_runs_every_stage_and_is_labelled(tmp_path: Path) -> None:
    settings = DemoSettings(size=32, model="cnn-tiny", epochs=2, lr=3e-3, n_boot=50, mlflow=False, workers=0)
    seen: list[str] = []
    (outcome,) = run_demo(tmp_path / "out", synthetic=True, settings=settings, on_task=lambda n, d: seen.append(d))
    assert outcome.synthetic and "SYNTHETIC" in seen[0]
    run = outcome.run_dir
    for path in ("config.yaml", "metrics.csv", "bundle/card.json", "bundle/model.safetensors", "eval/metrics.json",
                 "eval/predictions.csv", "report.html"):
        assert (run / path).exists(), path
    assert list((run / "explain" / "test-gradcam").glob("*.png")), "Grad-CAM overlays (TP, FP, FN) for the report"
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["thresholds"] and "val" in card["threshold_method"]
    assert sum(outcome.counts.values()) == 400 and set(outcome.counts) == {"train", "val", "test"}
    # the drawn findings are strong: even two tiny epochs must beat chance on the test split
    assert outcome.auroc is not None and outcome.auroc > 0.6
    assert outcome.auroc_low <= outcome.auroc <= outcome.auroc_high
