"""The HTML report: self-contained, and rendered in a real headless Chromium with every part visible and no
horizontal scrolling, on a laptop-sized window and on a narrow one."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chestxray.data.labels import NIH14
from chestxray.errors import DataError
from chestxray.evaluation.evaluate import PLOTS, evaluate_predictions
from chestxray.report.run_report import write_report
from tests.data import probes

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _predictions(n: int, n_patients: int, rng: np.random.Generator) -> pd.DataFrame:
    labels = list(NIH14)
    y = (rng.random((n, len(labels))) < 0.2).astype(np.uint8)
    y[:, labels.index("Hernia")] = 0  # a finding with no positives must show as n/a, not break the page
    s = 1 / (1 + np.exp(-(rng.normal(size=y.shape) + 1.5 * y - 1.5)))
    frame = pd.DataFrame({"image_id": [f"img{i}" for i in range(n)],
                          "patient_id": [f"P{i}" for i in rng.integers(0, n_patients, n)]})
    frame[labels] = y
    frame[[f"p_{x}" for x in labels]] = s
    return frame


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with eval/ (from scored predictions), history, config, explanations and a prepared manifest."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    steps = np.arange(0, 100, 10)
    pd.DataFrame({"step": steps, "epoch": steps // 50, "train_loss": 1 - steps / 200,
                  "val_loss": np.where(steps % 50 == 40, 1.1 - steps / 300, np.nan),
                  "val_auroc": np.where(steps % 50 == 40, 0.6 + steps / 500, np.nan), "lr": 1e-3}
                 ).to_csv(run / "metrics.csv", index=False)
    (run / "config.yaml").write_text("model: densenet121\nprepared: " + "/a/very/long/path" * 12 + "\nlr: 0.0003\n")
    for name, split, method, n in (("val-ig", "val", "ig", 2), ("test-gradcam", "test", "gradcam", 4)):
        folder = run / "explain" / name  # two explain runs: only the newer one may be shown
        folder.mkdir(parents=True)
        rows = []
        for i, outcome in zip(range(n), ("TP", "TP", "FP", "FN")):
            overlay = folder / f"0000000{i}_000_Mass_{method}.png"
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(overlay)
            rows.append({"image_id": f"0000000{i}_000.png", "path": "x", "split": split, "label": "Mass",
                         "probability": 0.9 - 0.1 * i, "threshold": 0.5, "truth": int(outcome in ("TP", "FN")),
                         "outcome": outcome, "method": method, "overlay": str(overlay), "empty_map": 0.0,
                         "pointing_hit": 1.0, "iou_top20": 0.25, "energy_in_box": 0.5, "box_fraction": 0.1})
        pd.DataFrame(rows).to_csv(folder / "scores.csv", index=False)
        (folder / "settings.json").write_text(json.dumps({"method": method, "split": split,
                                                          "selection": "balanced by outcome: TP, FP, FN"}))
        os.utime(folder / "scores.csv", (1e9 + n, 1e9 + n))
    prepared = root / "prepared"
    prepared.mkdir()
    counts = {"train": 700, "val": 100, "test": 200}
    positives = {s: rng.integers(0, c // 4, 14).tolist() for s, c in counts.items()}
    (prepared / "manifest.json").write_text(json.dumps(probes.sealed_manifest(list(NIH14), counts, positives)))
    evaluate_predictions(_predictions(100, 40, rng), _predictions(200, 80, rng), NIH14, run / "eval",
                         history=run / "metrics.csv", n_boot=50, extra={"prepared": str(prepared)})
    return run


def test_report_is_self_contained(run: Path) -> None:
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)  # nothing fetched from anywhere
    assert "<link" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') == len(PLOTS) + 4
    # one explain run (the newest), its ids intact, split, method, outcome and scores in each caption
    assert "val split" not in html and "· ig" not in html and "run explain/test-gradcam" in html
    assert "00000001_000.png · test split · Mass · p=0.80, threshold 0.50 · TP · gradcam · pointing 1.00" in html
    captions = re.findall(r'<figcaption>([^<]*· gradcam[^<]*)</figcaption>', html)
    assert [c.split(" · ")[4] for c in captions] == ["TP", "FP", "FN", "TP"]  # balanced: taken in turn by outcome
    for key in PLOTS:
        assert f'id="plot-{key}"' in html
    assert 'id="metrics-table"' in html and 'id="data-table"' in html
    assert "no positives among 200 images" in html  # the n/a reason is shown
    assert "densenet121" in html  # the config


def test_report_with_unusable_manifest_or_metrics(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "eval" / "metrics.json").read_text())
    bad = tmp_path / "bad_prepared"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"format": "old/0"}')
    (copy / "eval" / "metrics.json").write_text(json.dumps({**metrics, "prepared": str(bad)}))
    html = write_report(copy).read_text()
    assert 'id="data-table"' not in html and "Prepared dataset manifest not usable" in html and "old/0" in html
    assert 'id="metrics-table"' in html
    (copy / "eval" / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"metrics\.json: not valid JSON"):
        write_report(copy)


def _browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    assert not missing, f"{missing} not installed: run `make browser` (apt: chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.parametrize("width", [1366, 600])
def test_report_renders_in_headless_chromium(run: Path, width: int, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    path = write_report(run)
    driver = _browser(width, 900)
    try:
        driver.get(path.resolve().as_uri())
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= viewport, f"horizontal scrolling at window width {width}: {scroll} > {viewport}"

        table = driver.find_element(By.ID, "metrics-table")
        assert table.is_displayed()
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, "td").text for r in rows] == [*NIH14, "macro", "micro", "normal"]
        box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", table)
        assert box["left"] >= 0 and box["right"] <= viewport + 0.5

        images = driver.find_elements(By.CSS_SELECTOR, "figure.plot img, .explain-item img")
        assert len(images) == len(PLOTS) + 4
        ids = {f.get_attribute("id") for f in driver.find_elements(By.CSS_SELECTOR, "figure.plot")}
        assert ids == {f"plot-{key}" for key in PLOTS}
        for img in images:
            driver.execute_script("arguments[0].scrollIntoView()", img)
            assert img.is_displayed()
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
            box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", img)
            assert box["width"] > 0 and box["left"] >= 0 and box["right"] <= viewport + 0.5
        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(height + 200, 16000))
        shot = tmp_path / f"report_{width}.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] == width
    finally:
        driver.quit()


def test_cli_report(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chestxray.cli import app

    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "opens offline" in result.output and out.read_text().startswith("<!DOCTYPE html>")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "chestxray evaluate" in result.output
