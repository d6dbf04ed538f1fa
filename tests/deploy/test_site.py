"""`chestxray calibrate` and `--site`: a site profile fitted on a synthetic new site (other seed, higher prevalence)
beside a trained run; the bundle stays byte for byte the same, predict applies the profile, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.inference.site import SITE_FILE, read_site

runner = CliRunner()


@pytest.fixture(scope="module")
def site_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new site: 240 synthetic images drawn with another seed and more findings (prevalence 0.45 vs 0.3)."""
    from chestxray.data.catalog import save_catalog
    from chestxray.data.sources import read_nih
    from chestxray.data.split import assign_splits
    from chestxray.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("site")
    source = make_synthetic(root / "source", n=240, size=64, seed=11, findings_p=0.45)
    return save_catalog(assign_splits(read_nih(source / "labels.csv", source / "images"), seed=0), root / "catalog")


def _bundle_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "bundle").iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def calibrated(trained_run: Path, site_catalog: Path) -> tuple[Path, dict[str, bytes], dict[str, bytes]]:
    before = _bundle_bytes(trained_run)
    result = runner.invoke(app, ["calibrate", str(trained_run), "--data", str(site_catalog), "--labelled", "120",
                                 "--out", str(trained_run / "sites" / "synth-b"), "--miss", "0.1", "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    return trained_run / "sites" / "synth-b", before, _bundle_bytes(trained_run)


def test_calibrate_writes_a_profile_and_leaves_the_bundle_unchanged(calibrated) -> None:
    out, before, after = calibrated
    assert before == after  # weights, card and side files byte for byte
    for name in (SITE_FILE, "report.json", "summary.csv", "predictions.csv", "reliability_before.png",
                 "reliability_after.png"):
        assert (out / name).is_file(), name
    profile = read_site(out)
    report = json.loads((out / "report.json").read_text())
    assert profile.mode == "labelled" and profile.name == "synth-b"
    assert report["split"]["labelled_images"] >= 120 and report["split"]["held_out_images"] > 0
    assert report["calibration"]["method"] in ("none", "temperature", "platt", "isotonic")
    fit = report["conformal"]["recall"]
    assert fit["alpha"] == 0.1 and fit["feasible"] and 0 <= fit["threshold"] < 1
    held = report["conformal_recall_held_out"]
    assert held["n_with_finding"] + held["n_no_finding"] == report["split"]["held_out_images"]
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["when"]) == {"before", "after"} and len(summary) == 2 * len(profile.labels)
    unlike = report["unlike_training"]  # the run's OOD reference scored every site image
    assert unlike["images"] == report["images"] and 0 <= unlike["unusual"] <= unlike["images"]


def test_predict_with_site_gives_the_profiles_probabilities_and_decisions(calibrated, site_catalog: Path,
                                                                          tmp_path: Path) -> None:
    out, _, _ = calibrated
    run = out.parents[1]
    paths = pd.read_csv(site_catalog / "catalog.csv")["path"].head(8).tolist()
    raw_csv, site_csv = tmp_path / "raw.csv", tmp_path / "site.csv"
    for extra, dest in (([], raw_csv), (["--site", "synth-b"], site_csv)):
        result = runner.invoke(app, ["predict", str(run), *paths, "--format", "csv", "--out", str(dest), *extra])
        assert result.exit_code == 0, result.output
    raw, site = pd.read_csv(raw_csv), pd.read_csv(site_csv)
    profile = read_site(out)
    cols = [f"p_{x}" for x in profile.labels]
    np.testing.assert_allclose(site[cols].to_numpy(), profile.apply(raw[cols].to_numpy()), atol=1e-9)
    for name in profile.labels:
        expected = (site[f"p_{name}"] >= profile.thresholds[name]).astype(int)
        assert (site[f"pred_{name}"] == expected).all()


def test_label_free_site_gets_a_prevalence_estimate(trained_run: Path, site_catalog: Path) -> None:
    out = trained_run / "sites" / "synth-nolabels"
    result = runner.invoke(app, ["calibrate", str(trained_run), "--data", str(site_catalog), "--labelled", "0",
                                 "--out", str(out), "--n-boot", "30"])
    assert result.exit_code == 0, result.output
    assert "prevalence at the site" in result.output
    profile = read_site(out)
    prev = profile.prevalence
    assert profile.mode == "unlabelled" and prev["labels"] == profile.labels
    assert all(lo <= est <= hi for lo, est, hi in zip(prev["low"], prev["estimate"], prev["high"]))
    assert profile.steps[-1]["kind"] == "prior"
    card = json.loads((trained_run / "bundle" / "card.json").read_text())
    raw = np.array([[card["thresholds"][x] for x in profile.labels]])  # decisions unchanged: thresholds carried
    np.testing.assert_allclose(profile.apply(raw)[0], [profile.thresholds[x] for x in profile.labels], atol=1e-12)


def test_a_profile_for_another_model_or_a_missing_one_is_one_line(calibrated, site_catalog: Path,
                                                                   tmp_path: Path) -> None:
    out, _, _ = calibrated
    run = out.parents[1]
    scan = pd.read_csv(site_catalog / "catalog.csv")["path"].iloc[0]
    result = runner.invoke(app, ["predict", str(run), str(scan), "--site", "nowhere"])
    assert result.exit_code == 1 and "no site profile 'nowhere'" in result.output and "synth-b" in result.output
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((out / SITE_FILE).read_text())
    data["bundle"]["created"] = "2000-01-01T00:00:00+00:00"
    (other / SITE_FILE).write_text(json.dumps(data))
    result = runner.invoke(app, ["predict", str(run), str(scan), "--site", str(other) + "/"])
    assert result.exit_code == 1 and "fitted for another model" in result.output
    assert "Traceback" not in result.output


def test_calibrate_refuses_what_is_not_site_data(trained_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["calibrate", str(trained_run), "--data", str(tmp_path), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "not a catalog" in result.output
    result = runner.invoke(app, ["calibrate", str(trained_run), "--data", str(tmp_path), "--out", str(tmp_path / "s"),
                                 "--miss", "1.5"])
    assert result.exit_code == 1 and "--miss" in result.output


def test_serve_with_site_and_an_unusual_upload_in_chromium(calibrated, site_catalog: Path, tmp_path: Path) -> None:
    """The real server with --site: the page names the site, /predict gives the profile's probabilities, and a
    photograph (scikit-image's astronaut) is flagged on the page and in the JSON, while a site image is not."""
    import requests
    import skimage
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.deploy.conftest import free_port, running
    from tests.report.test_run_report import _browser

    out, _, _ = calibrated
    run = out.parents[1]
    profile = read_site(out)
    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    first = pd.read_csv(site_catalog / "catalog.csv", dtype=str).iloc[0]
    scan = Path(first["path"])
    port = free_port()
    with running(["chestxray", "serve", str(run), "--port", str(port), "--site", "synth-b"],
                 f"http://127.0.0.1:{port}/health", tmp_path / "serve.log"):
        server = f"http://127.0.0.1:{port}"
        ok = requests.post(f"{server}/predict", files={"file": scan.open("rb")}, timeout=60).json()
        odd = requests.post(f"{server}/predict", files={"file": photo.open("rb")}, timeout=60).json()
        driver = _browser(1280, 900)
        try:
            driver.get(server + "/")
            driver.find_element(By.ID, "file").send_keys(str(photo))
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: d.find_element(By.ID, "ood").is_displayed())
            assert "unlike the images the model was trained on" in driver.find_element(By.ID, "ood").text
            assert "Calibrated for site synth-b" in driver.find_element(By.ID, "calibration").text
            driver.find_element(By.ID, "file").clear()  # the input takes several files: a new choice, not one more
            driver.find_element(By.ID, "file").send_keys(str(scan))
            wait.until(lambda d: not d.find_element(By.ID, "ood").is_displayed())
        finally:
            driver.quit()
    assert ok["site"] == "synth-b" and ok["in_distribution"]["unusual"] is False
    assert odd["in_distribution"]["unusual"] is True and "unlike the images" in odd["in_distribution"]["warning"]
    raw = pd.read_csv(out / "predictions.csv", dtype={"image_id": str}).set_index("image_id").loc[first["image_id"]]
    expected = profile.apply(np.array([[raw[f"p_{x}"] for x in profile.labels]]))[0]
    got = np.array([f["probability"] for f in ok["findings"]])
    np.testing.assert_allclose(got, expected, atol=2e-6)  # the JSON rounds to 6 decimals
    assert [f["threshold"] for f in ok["findings"]] == [profile.thresholds[x] for x in profile.labels]


def test_export_with_site_carries_the_profile_into_onnx(calibrated, site_catalog: Path, tmp_path: Path) -> None:
    out, _, _ = calibrated
    run = out.parents[1]
    onnx_file = tmp_path / "site.onnx"
    result = runner.invoke(app, ["export", str(run), "--onnx", str(onnx_file), "--site", "synth-b"])
    assert result.exit_code == 0 and "site profile 'synth-b'" in result.output, result.output
    paths = pd.read_csv(site_catalog / "catalog.csv")["path"].head(6).tolist()
    frames = {}
    for name, model, extra in (("torch", str(run), ["--site", "synth-b"]), ("onnx", str(onnx_file), [])):
        dest = tmp_path / f"{name}.csv"
        result = runner.invoke(app, ["predict", model, *paths, "--format", "csv", "--out", str(dest), *extra])
        assert result.exit_code == 0, result.output
        frames[name] = pd.read_csv(dest)
    cols = [c for c in frames["torch"].columns if c.startswith(("p_", "pred_"))]
    np.testing.assert_allclose(frames["onnx"][cols].to_numpy(float), frames["torch"][cols].to_numpy(float), atol=1e-4)
    result = runner.invoke(app, ["predict", str(onnx_file), paths[0], "--site", "synth-b"])
    assert result.exit_code == 1 and "applies it already" in result.output
    result = runner.invoke(app, ["export", str(run), "--mlflow-register", "x", "--site", "synth-b"])
    assert result.exit_code == 1 and "--site goes into an ONNX export" in result.output


def test_calibrate_reads_a_prepared_folder_too(trained_run: Path, synthetic_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared-site"
    result = runner.invoke(app, ["calibrate", str(trained_run), "--data", str(synthetic_prepared), "--labelled", "300",
                                 "--out", str(out), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 600 and report["split"]["held_out_images"] > 0  # every split of the folder
