"""The run report: PSI computed right, and the HTML renders in headless Chromium with its
sections and plots (every <img> decoded by the browser)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from deepmine.report import population_stability_index, report_url


def test_psi_by_hand():
    expected = np.arange(100, dtype=float)  # quartile edges at 24.75, 49.5, 74.25
    actual = np.array([10.0] * 50 + [90.0] * 50)
    # bins: e = [.25,.25,.25,.25]; a = [.5, 0 -> 1e-4, 0 -> 1e-4, .5]
    e, a = np.full(4, 0.25), np.array([0.5, 1e-4, 1e-4, 0.5])
    want = float(np.sum((a - e) * np.log(a / e)))
    assert population_stability_index(expected, actual, bins=4) == pytest.approx(want, rel=1e-12)
    assert population_stability_index(expected, expected, bins=4) == 0.0


@pytest.fixture(scope="module")
def browser():
    chromedriver = shutil.which("chromedriver")
    assert chromedriver, "chromium-driver is installed by scripts/setup.sh"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def test_nightly_report_renders_in_chromium(nightly_run, browser):
    from selenium.webdriver.common.by import By
    lake, date = nightly_run["lake"], nightly_run["date"]
    manifest = lake.read_manifest(date)
    assert manifest["stages"]["report"]["status"] == "ok"
    browser.get(report_url(lake, date))
    titles = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert titles == manifest["stages"]["report"]["metrics"]["sections"]
    assert titles[:2] == ["Stages and timings", "Row reconciliation"]
    assert {"Customer segments (RFM)", "Recommendations"} <= set(titles)
    assert any(t.startswith("Association rules") for t in titles)
    images = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(images) >= 5
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 100 for w in widths), widths
    table_text = browser.find_element(By.CSS_SELECTOR, "#s1 table").text
    read = manifest["stages"]["ingest"]["counts"]["rows_read"]
    assert "rows_read" in table_text and str(read) in table_text
