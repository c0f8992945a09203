"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven by selenium): under a
bounded load the rendered page shows every worker's pid and a non-zero request rate; its '+' button scales the
pool through a POST with the token; a screenshot is kept as an artifact."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.control_client import request
from harness import PLAIN_APP, Corral, free_port, wait_for, write_app
from loadgen import bounded_load

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")

TOKEN = "dash-token-93c1f0e2"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1400,1250"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    def check(_: Any) -> Any:
        try:
            return condition()
        except (WebDriverException, ValueError):
            return None

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check, f"timed out waiting for {what}")


def page_pids(driver: Any) -> list[int]:
    from selenium.webdriver.common.by import By

    return sorted(int(cell.text) for cell in driver.find_elements(By.CSS_SELECTOR, "#workers td.pid"))


def save_artifact(source: Path) -> None:
    artifacts = os.environ.get("CORRAL_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, Path(artifacts) / source.name)


def test_dashboard_under_load(corrals: list[Corral], tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    write_app(tmp_path, PLAIN_APP % "served")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    admin_port = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "2", "--admin-bind", f"127.0.0.1:{admin_port}",
                    "--admin-token-file", str(token_file))
    corrals.append(corral)
    pids = corral.wait_ready(2)
    base = f"http://127.0.0.1:{admin_port}"
    wait_for(lambda: httpx.get(base + "/livez").status_code == 200, what="the admin listener")

    with bounded_load(corral.url) as done:
        browser.get(f"{base}/dashboard#token={TOKEN}")
        until(browser, lambda: page_pids(browser) == pids, "every worker's pid on the page")
        rate = until(browser, lambda: (r := float(browser.find_element(By.ID, "total-rate").text)) > 0 and r,
                     "a non-zero request rate")
        assert rate > 0 and done[0] > 0
        # the latency card and every worker's row show p50 / p99 figures
        until(browser, lambda: browser.find_element(By.ID, "total-latency").text.count(" ms") == 2,
              "the pool's p50 / p99")
        until(browser, lambda: all(row.text.count(" ms") == 2
                                   for row in browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")),
              "each worker's p50 and p99")
        assert "token" not in browser.current_url  # taken out of the address bar at once
        # the charts drew lines for the workers, and the events list shows their starts
        until(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#chart-rate polyline")) >= 3,
              "the request-rate chart")
        events = browser.find_element(By.ID, "events").text
        assert all(f"pid {pid}" in events for pid in pids)
        assert "of" in browser.find_element(By.ID, "total-memory").text  # against the budget
        until(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#chart-memory polyline")) >= 3,
              "the memory chart")
        total = "#chart-rate polyline.total"
        until(browser, lambda: len(browser.find_element(By.CSS_SELECTOR, total).get_attribute("points").split()) >= 8,
              "a few seconds of history in the chart")
        screenshot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(screenshot))
        save_artifact(screenshot)

        browser.find_element(By.ID, "scale-up").click()  # a POST with the token
        wait_for(lambda: len(request(corral.control, {"cmd": "status"})["workers"]) == 3, what="a third worker")
        until(browser, lambda: len(page_pids(browser)) == 3, "the third worker on the page")
        assert "scaled from 2 to 3" in browser.find_element(By.ID, "notice").text

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe  # no script error, no blocked request (the page loads nothing from elsewhere)

    # a fresh tab has no token: the page asks for it, and then works
    browser.switch_to.new_window("tab")
    browser.get(f"{base}/dashboard")
    form = until(browser, lambda: (f := browser.find_element(By.ID, "login")).is_displayed() and f, "the token form")
    assert "token" in browser.find_element(By.ID, "notice").text
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    form.submit()
    until(browser, lambda: len(page_pids(browser)) == 3, "the workers after signing in")
    assert not browser.find_element(By.ID, "login").is_displayed()


WAITING_STEP = """
    import pathlib, sys, time
    started, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    started.write_text("running")
    while not go.exists():
        time.sleep(0.05)
"""


def test_dashboard_during_the_pre_start_steps(corrals: list[Corral], tmp_path: Path, browser: Any) -> None:
    """The admin listener answers before the workers: the page says which step runs, then shows the workers."""
    import sys

    from selenium.webdriver.common.by import By

    write_app(tmp_path, PLAIN_APP % "served")
    write_app(tmp_path, WAITING_STEP, "step.py")
    started, go = tmp_path / "step-started", tmp_path / "go"
    admin_port = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", f"127.0.0.1:{admin_port}",
                    "--prestart", f"{sys.executable} {tmp_path / 'step.py'} {started} {go}")  # fmt: skip
    corrals.append(corral)
    wait_for(started.exists, what="the pre-start step to run")
    browser.get(f"http://127.0.0.1:{admin_port}/dashboard")
    summary = until(browser, lambda: "pre-start step 1 of 1 running for " in (t := browser.find_element(
        By.ID, "summary").text) and t, "the step in the summary")  # fmt: skip
    assert "generation 0 · 0/1 workers ready" in summary and summary.endswith(f"step.py {started} {go}"), summary
    assert page_pids(browser) == [] and not go.exists()

    go.write_text("")
    (pid,) = corral.wait_ready(1)
    until(browser, lambda: page_pids(browser) == [pid], "the worker on the page")
    assert "pre-start" not in browser.find_element(By.ID, "summary").text
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
