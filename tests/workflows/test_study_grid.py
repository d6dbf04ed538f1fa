"""Study grids: recipes are exactly `train --recipe`'s presets; `combinations:` pairs models with recipes (crossed
with the seeds), checked before any training; `--max-parallel 2` trains two runs at once with the results of one at
a time."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.errors import ChestXrayError
from chestxray.training.recipes import RECIPES
from chestxray.workflows import study as st

PNEUMONIA = Path(__file__).resolve().parents[2] / "docs" / "studies" / "pneumonia.yaml"


class _Captured(Exception):
    """Raised by the fake trainer once `train` has resolved its config."""


def test_study_recipe_is_train_recipe(synthetic_prepared: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import chestxray.training.train as training

    seen = []

    def capture(config, *args, **kwargs):
        seen.append(config)
        raise _Captured

    monkeypatch.setattr(training, "train", capture)
    monkeypatch.delenv("CHESTXRAY_OFFLINE", raising=False)  # train reads it into the config; the study does not
    result = CliRunner().invoke(app, ["train", str(synthetic_prepared), "--model", "efficientnet-lite0", "--recipe",
                                      "finetune", "--no-mlflow", "--no-progress", "--out", str(tmp_path / "t")])
    assert isinstance(result.exception, _Captured), result.output
    grid = st.normalise_grid({"combinations": [{"recipe": "finetune", "model": "efficientnet-lite0"}]})
    run = st.expand(synthetic_prepared, grid, tmp_path / "s", base={"mlflow": False, "progress": False}).runs[0]
    assert {**asdict(run.config), "out": None} == {**asdict(seen[0]), "out": None}
    assert (run.config.pretrained, run.config.freeze, run.config.unfreeze_last, run.config.backbone_lr_scale) == (
        "imagenet", "backbone", 2, 0.1) == tuple(RECIPES["finetune"][k] for k in ("pretrained", "freeze",
                                                                               "unfreeze_last", "backbone_lr_scale"))
    assert not hasattr(st, "RECIPES") or st.RECIPES is RECIPES  # one definition


def test_combinations_pair_models_with_recipes(synthetic_prepared: Path, tmp_path: Path) -> None:
    spec = st.expand(synthetic_prepared, st.normalise_grid(st.read_grid(PNEUMONIA)), tmp_path / "s")
    assert [r.name for r in spec.runs][:4] == ["scratch_cnn-small_0.002_seed0", "scratch_cnn-small_0.002_seed1",
                                               "scratch_cnn-small_0.002_seed2", "frozen_efficientnet-lite0_0.003_seed0"]
    assert len(spec.runs) == 9 and list(dict.fromkeys(r.group for r in spec.runs)) == [
        "recipe=scratch,model=cnn-small,lr=0.002", "recipe=frozen,model=efficientnet-lite0,lr=0.003",
        "recipe=finetune,model=efficientnet-lite0,lr=0.001"]
    by_group = {r.group.split(",")[0]: r.config for r in spec.runs}
    assert (by_group["recipe=scratch"].model, by_group["recipe=scratch"].pretrained) == ("cnn-small", None)
    assert (by_group["recipe=frozen"].freeze, by_group["recipe=frozen"].unfreeze_last) == ("backbone", 0)
    assert by_group["recipe=finetune"].backbone_lr_scale == 0.1 and all(r.config.epochs == 4 for r in spec.runs)
    # a combination's key that does not vary is no part of the group; lists beside it are crossed
    grid = st.normalise_grid({"combinations": [{"model": "cnn-tiny", "lr": 1e-3}, {"model": "cnn-small", "lr": 1e-3}],
                              "augment": ["none", "minimal"], "seeds": [0]})
    assert [r.name for r in st.expand(synthetic_prepared, grid, tmp_path / "t").runs] == [
        "cnn-tiny_none_seed0", "cnn-tiny_minimal_seed0", "cnn-small_none_seed0", "cnn-small_minimal_seed0"]


@pytest.mark.parametrize("text,message", [
    ("combinations:\n  - {recipe: scratch, modle: cnn-small}\n", r"combinations\[0\]: unknown setting 'modle' "
                                                                  r"\(did you mean 'model'\?\)"),
    ("combinations:\n  - {recipe: frozen, model: cnn-small}\n", r"recipe 'frozen' needs pretrained weights, but "
                                                                r"model 'cnn-small' has none"),
    ("combinations:\n  - {recipe: froze, model: efficientnet-lite0}\n", r"unknown recipe 'froze' \(did you mean "
                                                                        r"'frozen'\?\)"),
    ("combinations: []\n", r"'combinations' must be a non-empty list"),
    ("combinations:\n  - cnn-small\n", r"combinations\[0\] is 'cnn-small'; each combination is a non-empty mapping"),
    ("combinations:\n  - {model: [cnn-small, cnn-tiny]}\n", r"combinations\[0\]\.model is .*one value per setting"),
    ("models: [cnn-tiny]\ncombinations:\n  - {model: cnn-small}\n", r"'model' is both a list of the grid and in "
                                                                    r"combinations\[0\]"),
    ("combinations:\n  - {model: cnn-small, seed: 1}\n", r"combinations\[0\] sets 'seed'; give seeds once"),
    ("combinations:\n  - {model: cnn-small}\n  - {model: cnn-small}\n", r"combinations\[1\] repeats "
                                                                        r"combinations\[0\]"),
    ("combinations:\n  - {model: cnn-smal}\n", r"unknown model 'cnn-smal' \(did you mean 'cnn-small'\?\)"),
])
def test_bad_combinations_fail_before_training(text: str, message: str, synthetic_prepared: Path,
                                               tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(text)
    result = CliRunner().invoke(app, ["study", str(synthetic_prepared), "--grid", str(tmp_path / "grid.yaml"),
                                      "--no-mlflow", "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and not isinstance(result.exception, ChestXrayError), result.output
    assert "grid.yaml" in result.output or "model" in result.output
    import re

    assert re.search(message, " ".join(result.output.split())), result.output
    assert not (tmp_path / "s").exists()  # nothing trained, nothing written


def test_max_parallel_matches_one_at_a_time(synthetic_prepared: Path, tmp_path: Path) -> None:
    import torch

    grid = st.normalise_grid({"models": ["cnn-tiny"], "seeds": [0, 1]})
    base = {"mlflow": False, "progress": False, "epochs": 1, "batch_size": 32, "num_workers": 0, "lr": 3e-3,
            "augment": "none"}
    parallel = st.run_study(st.expand(synthetic_prepared, grid, tmp_path / "par", base=base, n_boot=40),
                            max_parallel=2, threads=1).results.set_index("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each parallel worker: the same arithmetic, the same numbers
    try:
        serial = st.run_study(st.expand(synthetic_prepared, grid, tmp_path / "ser", base=base, n_boot=40)
                              ).results.set_index("run")
    finally:
        torch.set_num_threads(threads)
    assert sorted(parallel.index) == ["cnn-tiny_seed0", "cnn-tiny_seed1"]
    for run in parallel.index:
        folder = Path(parallel.loc[run, "run_dir"])
        assert (folder / "bundle" / "card.json").is_file() and (folder / "eval" / "metrics.json").is_file()
        for col in ("val_auroc", "val_loss", "test_auroc", "test_auroc_low", "test_auroc_high", "fn", "fp"):
            assert parallel.loc[run, col] == pytest.approx(serial.loc[run, col], abs=1e-6), (run, col)
    assert parallel["val_auroc"].nunique() == 2  # two seeds, two different runs
    assert parallel["started_at"].max() < parallel["finished_at"].min()  # both ran at the same time
    assert serial["started_at"].max() >= serial["finished_at"].min()  # one after the other
    assert len(pd.read_csv(tmp_path / "par" / "study_groups.csv")) == 1
