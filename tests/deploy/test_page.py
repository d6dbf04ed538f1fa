"""The page a clinician is shown, in real headless Chromium against a real server: findings whose threshold is a
placeholder (no positive patient on validation) are marked "not validated" and get no decision; every finding shows
its measured quality; the model card (intended use, training population, limits) is on the page; the model's crop
is framed on the picture; several images in one upload; a 200-character DICOM name does not overflow; "1 finding";
a favicon; and the base64 previews only when asked for (documented in the OpenAPI schema)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.report.test_run_report import _browser


@pytest.fixture(scope="module")
def uploads(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wide PNG (a crop would show its centre), a DICOM with a 200-character name and a broken file."""
    root = tmp_path_factory.mktemp("uploads")
    source = sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[0]
    gray = np.asarray(Image.open(source).convert("L"))
    wide = root / "wide.png"
    Image.fromarray(np.concatenate([gray, gray[:, : gray.shape[1] // 2]], axis=1)).save(wide)  # 768 x 512
    long_name = root / ("1.2.276.0.7230010.3.1.4.8323329." + "6904" * 40 + ".dcm")
    shutil.copy(shared_data / "cxr-dicom-samples" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
                long_name)
    broken = root / "broken.png"
    broken.write_text("this is not an x-ray")
    return {"wide": wide, "dicom": long_name, "broken": broken}


def _card(trained_run: Path) -> dict:
    return json.loads((trained_run / "bundle" / "card.json").read_text())


def test_card_marks_placeholder_thresholds_not_validated(trained_run: Path) -> None:
    card = _card(trained_run)
    findings = card["findings"]
    placeholder = [n for n, f in findings.items() if f["val_positive_patients"] == 0]
    assert "Atelectasis" in placeholder and len(placeholder) == 10  # synthetic data: 4 findings exist
    for name in placeholder:
        assert findings[name]["validated"] is False and "placeholder (0.50)" in findings[name]["why"]
        assert card["thresholds"][name] == 0.5
    validated = [n for n, f in findings.items() if f["validated"]]
    assert sorted(validated) == ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax"]
    for name in validated:
        f = findings[name]
        assert f["val_positive_patients"] >= 10 and f["val_negative_patients"] >= 10
        assert f["split"] == "test" and f["auroc"] is not None
        assert (f["low"] is None) == (f["note"] is not None)
        if f["low"] is not None:
            assert f["interval_reaches_chance"] == (f["low"] <= 0.5 <= f["high"])
    model_card = card["model_card"]
    assert model_card["intended_use"].startswith("Research") and "Not a medical device" in model_card["intended_use"]
    assert model_card["population"]["images"]["train"] > 0 and model_card["population"]["source"] == "nih"
    assert any(line.startswith("No decision for Atelectasis") for line in model_card["limits"])


def test_api_decisions_quality_and_optional_preview(server: str, uploads: dict[str, Path]) -> None:
    small = requests.post(f"{server}/predict", files={"file": uploads["wide"].open("rb")}, timeout=60)
    assert small.status_code == 200 and len(small.content) < 8_000, len(small.content)  # no base64 by default
    body = small.json()
    assert "preview" not in body["image"] and body["image"]["width"] == 768 and body["image"]["height"] == 512
    assert body["image"]["resize"] == "stretch"  # prepare's default: the model sees the whole upload
    assert body["image"]["input_window"] == {"left": 0.0, "top": 0.0, "right": 1.0, "bottom": 1.0}
    rows = {f["name"]: f for f in body["findings"]}
    assert rows["Atelectasis"]["positive"] is None and rows["Atelectasis"]["validated"] is False
    assert "placeholder" in rows["Atelectasis"]["why"]
    assert rows["Effusion"]["validated"] is True and isinstance(rows["Effusion"]["positive"], bool)
    assert rows["Effusion"]["quality"].startswith("AUROC ")
    full = requests.post(f"{server}/predict?preview=true", files={"file": uploads["wide"].open("rb")}, timeout=60)
    image = full.json()["image"]
    assert image["preview"].startswith("data:image/png;base64,") and image["input_preview"].startswith("data:image")
    schema = requests.get(f"{server}/openapi.json", timeout=10).json()
    params = {p["name"]: p for p in schema["paths"]["/predict"]["post"]["parameters"]}
    assert params["preview"]["schema"]["default"] is False and "150 KB" in params["preview"]["description"]
    icon = requests.get(f"{server}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(icon.content)).size == (32, 32)


def test_page_in_chromium_no_decision_without_validation(server: str, uploads: dict[str, Path],
                                                         trained_run: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    card = _card(trained_run)
    driver = _browser(1100, 900)
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "14 findings" in d.find_element(By.ID, "model-name").text)
        assert driver.execute_script("return plural(1, 'finding')") == "1 finding"
        driver.find_element(By.CSS_SELECTOR, "#card summary").click()
        assert "Not a medical device" in driver.find_element(By.ID, "intended").text
        assert "nih: train" in driver.find_element(By.ID, "population").text
        limits = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#limits li")]
        assert limits == card["model_card"]["limits"]

        driver.find_element(By.ID, "file").send_keys("\n".join(str(uploads[k]) for k in ("wide", "broken", "dicom")))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#batch tbody tr")) == 3 and not d.find_element(
            By.ID, "status").text)
        wait.until(lambda d: d.execute_script("const i = document.getElementById('overlay');"
                                              "return i.complete && i.naturalWidth > 0;"))
        batch = driver.find_elements(By.CSS_SELECTOR, "#batch tbody tr")
        assert "broken.png: not a PNG, JPEG or DICOM file" in batch[1].text
        assert "broken.png" in driver.find_element(By.ID, "error").text  # the failure is said, the others shown

        rows = {r.find_elements(By.TAG_NAME, "td")[0].text: r for r in
                driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")}
        for name, f in card["findings"].items():
            cells = [td.text for td in rows[name].find_elements(By.TAG_NAME, "td")]
            if f["validated"]:
                assert cells[3] in ("positive", "negative") and cells[4].startswith("AUROC ")
            else:
                assert "unvalidated" in rows[name].get_attribute("class")
                assert "positive" not in rows[name].get_attribute("class")
                assert cells[3] == "not validated: no decision" and cells[3] not in ("positive", "negative")
                assert rows[name].find_elements(By.TAG_NAME, "td")[3].get_attribute("title") == f["why"]
        assert driver.execute_script("const p = document.getElementById('findings-pane');"
                                     "return p.scrollWidth <= p.clientWidth;")

        box = driver.find_element(By.ID, "crop-box")
        assert not box.is_displayed() and "stretched" in driver.find_element(By.ID, "crop-note").text
        assert driver.execute_script("return document.getElementById('input').naturalWidth") == card["image_size"]
        # a --resize crop bundle's window (as the API gives it for this 768 x 512 upload) is framed on the picture
        driver.execute_script("showCrop({left: 1 / 6, top: 0, right: 5 / 6, bottom: 1}, 'crop')")
        assert box.is_displayed() and "centre crop" in driver.find_element(By.ID, "crop-note").text
        frame = driver.execute_script("return document.getElementById('preview').getBoundingClientRect().toJSON()")
        crop = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", box)
        assert crop["width"] / frame["width"] == pytest.approx(4 / 6, abs=0.02)
        assert crop["left"] - frame["left"] == pytest.approx(frame["width"] / 6, abs=2)
        assert crop["height"] == pytest.approx(frame["height"], abs=2)

        batch[2].click()  # the DICOM with a 200-character name
        wait.until(lambda d: uploads["dicom"].name in d.find_element(By.ID, "image-size").text)
        name_box = driver.find_element(By.ID, "image-size")
        assert driver.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", name_box)
        pane = driver.execute_script("return arguments[0].parentElement.getBoundingClientRect().right", name_box)
        assert driver.execute_script("return arguments[0].getBoundingClientRect().right", name_box) <= pane + 0.5
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= viewport
        icon = driver.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
        assert icon == server + "/favicon.ico" and requests.get(icon, timeout=10).status_code == 200
    finally:
        driver.quit()


def test_run_report_shows_the_model_card(trained_run: Path, tmp_path: Path) -> None:
    from chestxray.report.run_report import write_report

    card = _card(trained_run)
    html = write_report(trained_run, tmp_path / "report.html").read_text()
    assert 'id="model-card"' in html and card["model_card"]["intended_use"] in html
    for line in card["model_card"]["limits"]:
        assert line in html
    assert "<td>Atelectasis</td><td>not validated: the validation split has no positive patient" in html
    assert "<td>Effusion</td><td>yes</td><td>AUROC " in html
