"""The study report renders in headless Chromium: group table, both figures, comparisons, working run links."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from tests.report.test_run_report import _browser


def test_study_report_in_headless_chromium(finished_study: dict) -> None:
    from selenium.webdriver.common.by import By

    out: Path = finished_study["out"]
    groups = pd.read_csv(out / "study_groups.csv")
    driver = _browser(1366, 900)
    try:
        driver.get((out / "study.html").resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#groups tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, "td").text for r in rows] == groups["group"].tolist()
        cells = [c.text for c in rows[0].find_elements(By.CSS_SELECTOR, "td")]
        assert "±" in cells[2] and "±" in cells[3] and cells[6].startswith("[")  # mean ± sd and the CI
        for image_id in ("roc", "curves"):
            img = driver.find_element(By.ID, image_id)
            driver.execute_script("arguments[0].scrollIntoView()", img)
            assert img.is_displayed()
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        sentences = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#comparisons li")]
        assert sentences == pd.read_csv(out / "study_comparisons.csv")["sentence"].tolist()
        links = driver.find_elements(By.CSS_SELECTOR, "#runs a")
        assert len(links) == 4
        for link in links:
            target = Path(unquote(urlparse(link.get_attribute("href")).path))
            assert target.is_file() and target.name == "report.html"
        selected = driver.find_elements(By.CSS_SELECTOR, "#runs tr.selected td:first-child")
        assert sorted(td.text for td in selected) == sorted(groups["selected_run"])
        links[0].click()  # a run's own report opens from the study
        assert "Run " in driver.title
    finally:
        driver.quit()
