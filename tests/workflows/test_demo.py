"""The demo: the whole chain in one call, on synthetic images (fast) and with a clear error when no data is found."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chestxray.errors import DataError
from chestxray.workflows.demo import DemoSettings, RecipeOutcome, RecipeRun, run_demo


def test_demo_without_samples_says_how_to_point_at_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHESTXRAY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"--data DIR or CHESTXRAY_DATA=DIR.*--synthetic"):
        run_demo(tmp_path / "out")


def test_synthetic_demo_runs_every_stage_and_is_labelled(tmp_path: Path) -> None:
    settings = DemoSettings(size=32, model="cnn-tiny", epochs=2, lr=3e-3, n_boot=50, mlflow=False, workers=0,
                            recipes=())
    seen: list[str] = []
    (outcome,) = run_demo(tmp_path / "out", synthetic=True, settings=settings, on_task=lambda n, d: seen.append(d))
    assert outcome.synthetic and "SYNTHETIC" in seen[0]
    run = outcome.run_dir
    for path in ("config.yaml", "metrics.csv", "bundle/card.json", "bundle/model.safetensors", "eval/metrics.json",
                 "eval/predictions.csv", "report.html"):
        assert (run / path).exists(), path
    assert list((run / "explain" / "test-gradcam").glob("*.png")), "Grad-CAM overlays (TP, FP, FN) for the report"
    audited = pd.read_csv(run / "audit" / "subgroups.csv")  # the demo audits its run: NIH layout, sex / age / view
    assert set(audited["attribute"]) == {"sex", "age", "view"} and (run / "audit" / "explain_coverage.csv").exists()
    html = (run / "report.html").read_text(encoding="utf-8")
    assert '<section id="audit">' in html and 'id="audit-table"' in html
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["thresholds"] and "val" in card["threshold_method"]
    assert sum(outcome.counts.values()) == 400 and set(outcome.counts) == {"train", "val", "test"}
    # the drawn findings are strong: even two tiny epochs must beat chance on the test split
    assert outcome.auroc is not None and outcome.auroc > 0.6
    assert outcome.auroc_low <= outcome.auroc <= outcome.auroc_high
    (recipe,) = outcome.recipes
    assert recipe.precision in ("bf16-mixed", "32-true") and "auto" in recipe.precision_reason and not recipe.reused
    # a second demo with the same settings and data reuses the finished run instead of training again
    weights = run / "bundle" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (again,) = run_demo(tmp_path / "out", synthetic=True, settings=settings)
    assert again.recipes[0].reused and weights.stat().st_mtime_ns == before
    assert (again.auroc, again.recipes[0].val_auroc, again.recipes[0].precision) == (
        outcome.auroc, recipe.val_auroc, recipe.precision)
    # other settings train afresh
    (third,) = run_demo(tmp_path / "out", synthetic=True, settings=replace(settings, epochs=1))
    assert not third.recipes[0].reused and weights.stat().st_mtime_ns != before


def test_recipes_side_by_side_winner_on_validation(tmp_path: Path) -> None:
    """Scratch vs frozen ImageNet Lite0 (offline weights) on the synthetic task: both trained, evaluated, and the
    reported run is the one with the best VALIDATION AUROC."""
    recipes = (RecipeRun("scratch", "cnn-tiny", 3e-3, 1), RecipeRun("frozen", "efficientnet-lite0", 3e-3, 1))
    settings = DemoSettings(size=32, n_boot=50, mlflow=False, workers=0, recipes=recipes)
    (outcome,) = run_demo(tmp_path / "out", synthetic=True, settings=settings)
    assert [(r.recipe, r.model) for r in outcome.recipes] == [("scratch", "cnn-tiny"), ("frozen", "efficientnet-lite0")]
    best = max(outcome.recipes, key=lambda r: r.val_auroc)
    assert outcome.chosen == best.recipe and outcome.run_dir == best.run_dir and outcome.auroc == best.auroc
    assert (outcome.run_dir / "report.html").exists()
    frozen = yaml.safe_load((outcome.recipes[1].run_dir / "config.yaml").read_text())
    assert (frozen["pretrained"], frozen["freeze"], frozen["unfreeze_last"]) == ("imagenet", "backbone", 0)
    for r in outcome.recipes:
        assert r.train_seconds > 0
        if r.val_low is None:  # a finding with too few validation patients: no interval, and the demo says so
            assert r.val_reason.startswith("no interval") and r.above_chance is None
        else:
            assert r.val_low <= r.val_auroc <= r.val_high


def test_chance_level_is_flagged() -> None:
    def outcome(low: float | None) -> RecipeOutcome:
        return RecipeOutcome("scratch", "cnn-small", Path("."), 0.55, low, 0.6, 0.5, 0.4, 0.6)

    assert outcome(0.51).above_chance and not outcome(0.49).above_chance and not outcome(None).above_chance


def test_demo_command_prints_precision_and_reuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command line says which precision trained the figures and when runs were reused, not retrained."""
    from typer.testing import CliRunner

    import chestxray.workflows.demo as demo
    from chestxray.cli import app
    from chestxray.workflows.demo import DemoOutcome

    recipe = RecipeOutcome("scratch", "cnn-tiny", tmp_path, 0.9, 0.8, 0.95, 0.85, 0.8, 0.9, precision="32-true",
                           precision_reason="auto: CPU without native bf16", reused=True)
    done = DemoOutcome("synthetic", "d", tmp_path, tmp_path / "report.html", {"train": 1, "val": 1, "test": 1},
                       ["Nodule"], 0.85, 0.8, 0.9, recipes=[recipe], chosen="scratch")
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: [done])
    result = CliRunner().invoke(app, ["demo", "--synthetic", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "precision: 32-true — auto: CPU without native bf16" in text
    assert "reused 1 finished run(s) of an earlier demo" in text
