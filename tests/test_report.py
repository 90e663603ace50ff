"""The run report: the page of a real nightly checked against the lake in
headless Chromium: the sections its stages call for, the manifest's and the tables' numbers, every
plot decoded."""
from __future__ import annotations

import shutil

import pytest

from deepmine.ops.report import report_url


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


# What each stage's output puts in the report: a section is expected when its stage ran ok for the
# date and its table is in the lake, independently of what render_report says it drew.
def expected_sections(lake, date: str) -> list[str]:
    stages = lake.read_manifest(date)["stages"]
    partition = f"run_date={date}"
    ok = {name for name, rec in stages.items() if rec.get("status") in ("ok", "degraded")}
    expected = ["Stages and timings"]
    if any("rows_read" in stages[n].get("counts", {}) for n in ok):
        expected.append("Row reconciliation")
    if "rfm" in ok and lake.has_partition("mining/rfm", partition):
        expected.append("Customer segments (RFM)")
    if "rules" in ok and lake.has_partition("mining/rules", partition):
        expected.append("Association rules (top 20 by lift)")
    if "recommend" in ok and stages["recommend"].get("metrics"):
        expected.append("Recommendations")
    if any(n.startswith("train") for n in ok):
        expected.append("Training")
    return expected


def _cells(browser, section: int) -> list[list[str]]:
    from selenium.webdriver.common.by import By
    table = browser.find_element(By.CSS_SELECTOR, f"#s{section} table")
    return [[c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
            for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def _g4(x: float) -> str:
    return f"{x:.4g}"


def test_nightly_report_matches_the_lake(nightly_run, browser):
    """The report of the shared nightly (ingest, rfm, rules, recommend) checked against the lake:
    the sections are those its stages' outputs call for, in order; the reconciliation, segment
    sizes, top rules and recommendation metrics in the page are the manifest's and the lake's
    numbers; every embedded PNG decodes (in Pillow and in Chromium)."""
    import base64
    import io
    import re

    from PIL import Image
    from selenium.webdriver.common.by import By
    lake, date = nightly_run["lake"], nightly_run["date"]
    manifest = lake.read_manifest(date)
    assert manifest["stages"]["report"]["status"] == "ok"
    browser.get(report_url(lake, date))
    titles = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert titles == expected_sections(lake, date)
    assert {"Row reconciliation", "Customer segments (RFM)", "Recommendations"} <= set(titles)
    section = {t: i for i, t in enumerate(titles)}

    # every stage of the manifest, with its status
    status = {row[0]: row[1] for row in _cells(browser, section["Stages and timings"])}
    assert status == {n: r["status"] for n, r in manifest["stages"].items() if n != "report"}

    # row reconciliation: the ingest's counts, and read = clean + quarantined
    ingest = manifest["stages"]["ingest"]["counts"]
    row = _cells(browser, section["Row reconciliation"])[0]
    assert row[0] == "ingest" and row[2:5] == [str(ingest["rows_read"]), str(ingest["rows_clean"]),
                                               str(ingest["rows_quarantined"])]
    assert ingest["rows_read"] == ingest["rows_clean"] + ingest["rows_quarantined"]

    # RFM: customers per segment as counted in the lake's table
    rfm = lake.read("mining/rfm", f"run_date={date}").groupBy("segment").count().collect()
    page = {r[0]: int(r[-1]) for r in _cells(browser, section["Customer segments (RFM)"])}
    assert page == {r["segment"]: r["count"] for r in rfm}

    # rules: the top rules by lift are the lake's, with their numbers
    rules = lake.read("mining/rules", f"run_date={date}").toPandas()
    top = rules.sort_values(["lift", "confidence"], ascending=False).head(20)
    shown = _cells(browser, section["Association rules (top 20 by lift)"])
    assert len(shown) == len(top) > 0  # (compared as multisets: rules may tie on lift)
    assert sorted(c[2:5] for c in shown) == sorted(
        [_g4(r["support"]), _g4(r["confidence"]), _g4(r["lift"])] for _, r in top.iterrows())

    # recommendations: every metric and its baseline as the manifest has them
    metrics = manifest["stages"]["recommend"]["metrics"]
    shown = {c[0]: c[1:] for c in _cells(browser, section["Recommendations"])}
    numeric = {k: v for k, v in metrics.items() if not k.startswith("baseline_")
               and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(shown) == set(numeric)
    for name, value in numeric.items():
        assert shown[name][0] == _g4(value), name
        if f"baseline_{name}" in metrics:
            assert shown[name][1] == _g4(metrics[f"baseline_{name}"]), name

    # every embedded image decodes, in Pillow and in the browser
    html_text = lake.read_text(report_url(lake, date))
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)
    assert len(pngs) == len(browser.find_elements(By.CSS_SELECTOR, "img.plot")) >= len(titles)
    for data in pngs:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == "PNG" and min(image.size) > 50
    widths = browser.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 100 for w in widths), widths
