"""The dashboard in a real browser: headless Chromium (Selenium) against `gateway serve`.

Checks what the Flask test client cannot: that a browser keeps the session cookie across
gunicorn workers, follows the login redirect, submits the forms as rendered, and that the page
is readable (a screenshot is saved to tests/artifacts/dashboard.png for people to look at).
"""

from __future__ import annotations

import random
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from registry import tokens
from registry.outcomes import insert_outcomes, record_feedback
from tests.conftest import server_env
from tests.server import gateway_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1440,1000")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
                              "(apt-get install -y chromium chromium-driver)"),
]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def call(base: str, path: str, token: str, body=None, method: str | None = None,
         headers: dict[str, str] | None = None):
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method or ("POST" if data else "GET"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def log_history(db, now: datetime) -> None:
    """A day of earlier outcomes (A/B between v1 and v2, v3 shadowing v1), with feedback, so
    the charts have lines to draw and not only the current bucket."""
    rng = random.Random(7)
    rows, feedback = [], []
    for hours_ago in range(23, 0, -1):
        start = now - timedelta(hours=hours_ago)
        for version, accuracy, latency in ((1, 0.93, 0.9), (2, 0.97, 2.5)):
            for i in range(rng.randint(12, 30)):
                rid = f"hist-{hours_ago}-{version}-{i}"
                ts = start + timedelta(seconds=rng.uniform(0, 3000))
                label = rng.randrange(10)
                correct = rng.random() < accuracy
                predicted = label if correct else (label + 1) % 10
                row = {"request_id": rid, "model": "digits", "version": version,
                       "kind": "primary", "reason": "weight", "revision": 1, "ts": ts,
                       "latency_ms": rng.lognormvariate(0, 0.5) * latency, "model_ms": None,
                       "status": 200, "error_code": None, "prediction": None,
                       "predicted_label": predicted, "input_sha256": None, "inputs": None}
                rows.append(row)
                if version == 1 and hours_ago <= 12:
                    rows.append({**row, "version": 3, "kind": "shadow", "reason": "shadow",
                                 "ts": ts + timedelta(milliseconds=5),
                                 "predicted_label": label if rng.random() < 0.95 else 0})
                feedback.append((rid, label, 1.0 if correct else 0.0))
    insert_outcomes(db, rows)
    for rid, label, reward in feedback:
        record_feedback(db, "digits", rid, label, reward)


def wait_for_requests(base: str, token: str, expected: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = call(base, "/analytics/models/digits/compare", token)
        assert status == 200, body
        if sum(v["requests"] for v in body["versions"]) >= expected:
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_dashboard_in_chromium(on_sqlite_only, settings, db, digits, tmp_path, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    ops = tokens.create_token(db, "ops", "browser-ops", "tests")
    app = tokens.create_token(db, "app", "browser-app", "tests")
    log_history(db, datetime.now(UTC))
    with gateway_server(server_env(settings), workers=2, cwd=tmp_path) as base:
        before = call(base, "/analytics/models/digits/compare", ops)[1]
        logged = sum(v["requests"] for v in before["versions"])
        X, y = digits["X"], digits["y"]
        items = []
        for version in (1, 2, 3):
            for i in range(6):
                rid = f"live-{version}-{i}"
                status, body = call(base, "/predict", app, {"model": "digits",
                                                            "inputs": [X[i].tolist()]},
                                    headers={"X-Model-Version": str(version),
                                             "X-Request-Id": rid})
                assert status == 200, body
                items.append({"request_id": rid, "label": int(y[i])})
        status, body = call(base, "/feedback", app, {"items": items})
        assert status == 200 and {i["status"] for i in body["items"]} == {202}, body
        status, first = call(base, "/admin/models/digits/traffic", ops,
                             {"weights": {"1": 90, "2": 10}, "shadow": {"3": 100},
                              "reason": "A/B with a shadow"}, method="PUT")
        assert status == 200, first
        wait_for_requests(base, ops, logged + 18)

        browser.get(f"{base}/dashboard")
        assert "/dashboard/login" in browser.current_url
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-login.png"))
        browser.find_element(By.NAME, "token").send_keys(ops)
        login_form = browser.find_element(By.CSS_SELECTOR, ".login form")
        login_form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 30).until(staleness_of(login_form))
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "model-digits"))

        def series(chart: str) -> set[str]:
            return {e.get_attribute("data-version") for e in browser.find_elements(
                By.CSS_SELECTOR, f'#model-digits svg[data-chart="{chart}"] g.series')}

        assert series("requests") == {"1", "2", "3"}
        assert series("accuracy") == {"1", "2", "3"}
        assert series("shadow") == {"3"}

        form = browser.find_element(By.CSS_SELECTOR, "#model-digits form.policy-form")
        for name, value in (("weight-1", "60"), ("weight-2", "40"), ("weight-3", ""),
                            ("shadow-1", ""), ("shadow-2", ""), ("shadow-3", "25")):
            field = form.find_element(By.NAME, name)
            field.clear()
            if value:
                field.send_keys(value)
        form.find_element(By.NAME, "reason").send_keys("more traffic to v2 (from the browser)")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 30).until(staleness_of(form))  # the next page has loaded
        WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: "revision 2 is live" in d.find_element(By.TAG_NAME, "body").text)

        status, policy = call(base, "/admin/models/digits/traffic", ops)
        assert status == 200
        assert policy["revision"] == 2 and policy["weights"] == {"1": 60, "2": 40}
        assert policy["shadow"] == {"3": 25} and policy["updated_by"] == "browser-ops"

        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1440, min(int(height) + 200, 8000))  # the window has chrome
        browser.execute_script("window.scrollTo(0, 0)")
        path = ARTIFACTS / "dashboard.png"
        assert browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
