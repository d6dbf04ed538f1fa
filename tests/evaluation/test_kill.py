"""kill -9 of `evaluate` and `report`: their outputs are whole or absent, and a re-run leaves exactly the outputs of
an uninterrupted run with no temporary file behind. Kills happen at test-only kill points (chestxray.files.kill_point)
in a forked child, so no interpreter start is paid per kill."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from chestxray.data.prepare import prepare_dataset
from chestxray.data.sources import read_folder
from chestxray.data.split import assign_splits
from chestxray.evaluation.evaluate import evaluate_run
from chestxray.files import KILL_ENV
from chestxray.models import build_model
from chestxray.models.bundle import save_bundle
from chestxray.report.run_report import write_report

N_BOOT = 20


def _in_killed_child(work: Callable[[], object], point: str) -> int:
    """Run `work` in a forked child with the kill point armed; its exit code (-9 when the point killed it)."""
    def child() -> None:
        os.environ[KILL_ENV] = point
        torch.set_num_threads(1)
        work()
        os._exit(0)

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(180)
    assert proc.exitcode is not None, f"child stuck at {point}"
    return proc.exitcode


def _tree(folder: Path) -> dict[str, object]:
    """Every file under `folder` by relative path: bytes, metrics.json without its timestamp."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(folder))
            if rel == "metrics.json":
                out[rel] = {k: v for k, v in json.loads(path.read_text()).items() if k != "evaluated"}
            else:
                out[rel] = path.read_bytes()
    return out


def _card(run: Path) -> dict[str, object]:
    """The bundle card without the evaluation's timestamp (metrics.evaluation.date)."""
    card = json.loads((run / "bundle" / "card.json").read_text())
    card.get("metrics", {}).get("evaluation", {}).pop("date", None)
    return card


def _report_text(path: Path) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<time>", path.read_text())


def _stray(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name != ".gitkeep")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label (NORMAL/PNEUMONIA folder) run with a cnn-tiny bundle: one plot panel each, so evaluations are quick."""
    root = tmp_path_factory.mktemp("killeval")
    rng = np.random.default_rng(0)
    for i in range(48):
        cls = "PNEUMONIA" if i % 2 else "NORMAL"
        (root / "source" / cls).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 120, (24, 24), dtype=np.uint8) + (100 if cls == "PNEUMONIA" else 0)
        Image.fromarray(pixels.astype(np.uint8)).save(root / "source" / cls / f"person{i}_{i}.png")
    catalog = assign_splits(read_folder(root / "source"), ratios=(0.5, 0.25, 0.25), seed=0)
    prepare_dataset(catalog, root / "prepared", size=32, resize="pad", workers=0)
    torch.manual_seed(0)
    run = root / "run"
    save_bundle(run / "bundle", build_model("cnn-tiny", num_labels=1), {
        "architecture": "cnn-tiny", "num_labels": 1, "in_chans": 1, "image_size": 32, "resize": "pad",
        "normalization": "gray", "labels": list(catalog.labels), "task": catalog.task, "prepared": str(root / "prepared"),
        "thresholds": None, "seed": 0})
    steps = np.arange(5, 45, 10)
    pd.DataFrame({"step": steps, "epoch": steps // 20, "train_loss": 0.7 - steps / 100, "val_loss": 0.6,
                  "val_auroc": 0.5 + steps / 200, "lr": 1e-3}).to_csv(run / "metrics.csv", index=False)
    pd.DataFrame({"epoch": [0, 1], "step": [15, 35], "train_loss": [0.6, 0.5], "val_loss": [0.7, 0.6],
                  "val_auroc": [0.6, 0.7], "lr": [1e-3, 5e-4]}).to_csv(run / "history.csv", index=False)
    return run


def test_evaluate_and_report_killed_at_each_point_then_rerun_match_an_uninterrupted_run(run: Path) -> None:
    card_before = (run / "bundle" / "card.json").read_bytes()
    evaluate = lambda: evaluate_run(run, n_boot=N_BOOT)
    evaluate()
    write_report(run)
    reference, ref_card = _tree(run / "eval"), _card(run)
    ref_report = _report_text(run / "report.html")
    assert ref_card["thresholds"] and _stray(run) == []
    shutil.rmtree(run / "eval")
    (run / "report.html").unlink()
    (run / "bundle" / "card.json").write_bytes(card_before)

    # no earlier evaluation: killed while writing the tables, then while writing metrics.json → no eval/ at all
    for point in ("replace:predictions.csv", "replace:metrics.json"):  # both before the plots are drawn
        assert _in_killed_child(evaluate, point) == -9, point
        assert not (run / "eval").exists() and (run / "bundle" / "card.json").read_bytes() == card_before
        assert any(p.startswith(".eval.") for p in _stray(run))  # the killed run's temporary folder
    evaluate()
    assert _tree(run / "eval") == reference and _card(run) == ref_card
    assert _stray(run) == []

    # an earlier evaluation exists: killed while updating the card → the old eval/ and card stay whole;
    # killed between moving the old eval/ aside and renaming the new one in → no eval/ (absent, not mixed)
    assert _in_killed_child(evaluate, "replace:card.json") == -9
    assert _tree(run / "eval") == reference and _card(run) == ref_card
    assert any(".card.json." in p for p in _stray(run))  # the card's temporary file
    assert _in_killed_child(evaluate, "swap:eval") == -9
    assert not (run / "eval").exists() and _card(run) == ref_card
    assert any(p.endswith(".old") for p in _stray(run)) and any(p.endswith(".tmp") for p in _stray(run))
    evaluate()
    assert _tree(run / "eval") == reference and _card(run) == ref_card
    assert _stray(run) == []

    # report: killed after writing the HTML but before its rename → no report.html; the re-run writes it whole
    assert _in_killed_child(lambda: write_report(run), "replace:report.html") == -9
    assert not (run / "report.html").exists() and any(".report.html." in p for p in _stray(run))
    write_report(run)
    assert _report_text(run / "report.html") == ref_report and _stray(run) == []
