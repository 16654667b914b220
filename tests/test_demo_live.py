"""`gateway demo` as a new user runs it, with its simulated application, for a bounded time.

One demo for the module (rollout intervals and samples shortened): through the API, requests,
feedback, shadow agreement and rollout decisions appear; in a real browser the dashboard shows
the lineage graph and the rollout panel; Ctrl-C (SIGINT to the process group, as a terminal
sends it) stops everything, the simulated application included: no process is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.server import free_port

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "docs" / "demo-dashboard.png"


def get(base: str, path: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except urllib.error.URLError:  # not listening yet
        return 0, {}


def group_processes(pgid: int) -> list[str]:
    """Command lines of the processes still in the demo's process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_"))}
    env.update({"GATEWAY_ROLLOUT_INTERVAL": "0.5", "GATEWAY_DEMO_RATE": "60"})
    log = open(workdir / "demo.log", "wb")  # noqa: SIM115 - handed to the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "demo", "--bind", f"127.0.0.1:{port}",
         "--min-samples", "10"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    log.close()
    started = time.monotonic()
    tokens: dict[str, str] = {}
    try:
        while time.monotonic() - started < 120 and "feedback" not in tokens:
            for line in (workdir / "demo.log").read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].startswith("mgw_"):
                    tokens[parts[0]] = parts[1]
            assert proc.poll() is None, (workdir / "demo.log").read_text()[-3000:]
            time.sleep(0.2)
        assert {"ops", "analyst", "app", "feedback"} <= set(tokens)
        yield {"base": f"http://127.0.0.1:{port}", "tokens": tokens, "proc": proc,
               "workdir": workdir, "setup_s": time.monotonic() - started}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_the_demo_comes_alive_and_stops_whole(demo):
    base, ops, analyst = demo["base"], demo["tokens"]["ops"], demo["tokens"]["analyst"]
    started = time.monotonic()
    deadline = started + 150
    rollout: dict[str, Any] = {}
    compare: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, rollout = get(base, "/admin/models/digits/rollout", ops)
        _, compare = get(base, "/analytics/models/digits/compare", analyst)
        decided = status == 200 and rollout["last_decision"]["action"] in {
            "advance", "complete", "rollback"}
        labelled = sum(v["feedback"] for v in compare.get("versions", []))
        agreed = sum(s["compared"] for s in compare.get("shadow", []))
        if decided and labelled >= 10 and agreed >= 10:
            break
        time.sleep(1)
    else:
        pytest.fail(f"no rollout decision with traffic in time: {rollout}, {compare}")
    # the simulated application's requests, its labels, and the forest's shadow agreement
    requests_by_version = {v["version"]: v["requests"] for v in compare["versions"]}
    assert requests_by_version[1] > 0 and requests_by_version.get(3, 0) > 0, compare
    assert all(v["accuracy"] is None or 0.8 < v["accuracy"]["value"] <= 1.0
               for v in compare["versions"]), compare
    shadow = {(s["version"], s["primary_version"]): s for s in compare["shadow"]}
    assert shadow[(2, 1)]["compared"] > 0 and 0.8 < shadow[(2, 1)]["agreement"] <= 1.0
    # the better mlp advances (or completes); a demo never rolls it back on these numbers
    assert rollout["candidate"] == 3 and rollout["baseline"] == 1
    assert rollout["last_decision"]["action"] in {"advance", "complete"}, rollout
    assert rollout["step_index"] >= 1 or rollout["state"] == "completed"
    status, audit = get(base, "/admin/audit?model=digits", ops)
    assert status == 200 and "rollout.start" in {e["action"] for e in audit["entries"]}
    decided_after = time.monotonic() - started
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        look_at_the_dashboard(base, ops, demo["workdir"])
    looked_after = time.monotonic() - started
    # Ctrl-C: the whole process group stops, simulator, gunicorn, agent and Redis included
    proc = demo["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0, (demo["workdir"] / "demo.log").read_text()[-3000:]
    print(f"demo: set up in {demo['setup_s']:.1f} s, a decision {decided_after:.1f} s later, "
          f"browser done at {looked_after:.1f} s, stopped at {time.monotonic() - started:.1f} s")
    for _ in range(50):
        if not group_processes(proc.pid):
            break
        time.sleep(0.1)
    assert group_processes(proc.pid) == []
    out = (demo["workdir"] / "demo.log").read_text()
    summary = [line for line in out.splitlines() if line.startswith("simulated application:")]
    assert summary, out[-2000:]
    answered = int(summary[0].split()[2])
    failed = int(summary[0].split(", ")[1].split()[0])
    assert answered > 100 and failed <= answered * 0.01, summary


def look_at_the_dashboard(base: str, token: str, workdir: Path) -> None:
    """The lineage graph and the rollout panel in a real browser; the screenshot for docs/."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--window-size=1440,1800",
                 f"--user-data-dir={workdir / 'chromium'}"):
        options.add_argument(flag)
    t0 = time.monotonic()
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        print(f"browser: started in {time.monotonic() - t0:.1f} s")
        driver.get(f"{base}/dashboard?model=digits")
        print(f"browser: login page at {time.monotonic() - t0:.1f} s")
        driver.find_element(By.NAME, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, ".login form button[type=submit]").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR,
                                                                  "svg.lineage"))
        print(f"browser: dashboard at {time.monotonic() - t0:.1f} s")
        graph = driver.find_element(By.CSS_SELECTOR, "#model-digits svg.lineage")
        nodes = {n.get_attribute("data-version"): n for n in
                 graph.find_elements(By.CSS_SELECTOR, "g.node")}
        assert set(nodes) == {"1", "2", "3"}
        edges = {(e.get_attribute("data-parent"), e.get_attribute("data-child"),
                  e.get_attribute("data-relation"))
                 for e in graph.find_elements(By.CSS_SELECTOR, "g.edge")}
        assert edges == {("1", "2", "retrained"), ("1", "3", "retrained")}
        champion = nodes["3"].text if "champion" in nodes["3"].text else nodes["1"].text
        assert "champion" in champion and "shadow 100%" in nodes["2"].text
        assert "of traffic" in nodes["1"].text + nodes["3"].text
        panel = driver.find_element(By.CSS_SELECTOR, "#model-digits .rollout")
        decisions = panel.find_elements(By.CSS_SELECTOR, "tr[data-decision]")
        actions = {d.get_attribute("data-decision") for d in decisions}
        assert actions & {"advance", "complete"}, panel.text
        print(f"browser: checked at {time.monotonic() - t0:.1f} s")
        graph_png = workdir / "lineage.png"
        graph.screenshot(str(graph_png))
        assert graph_png.stat().st_size > 1000
        driver.save_screenshot(str(workdir / "dashboard.png"))
        if os.environ.get("MGW_UPDATE_DOCS_SCREENSHOT"):
            shutil.copyfile(workdir / "dashboard.png", SCREENSHOT)
    finally:
        driver.quit()


def test_the_rollback_scenario_sets_up_a_flawed_child_of_mlp(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "demo", "--scenario", "rollback",
         "--no-serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlp_flawed=4" in result.stdout and "rollout of v4 over the champion v1" in \
        result.stdout
    from registry import rollouts, service
    from registry.db import Database

    db = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        flawed = service.get_version(db, "digits", 4)
        assert flawed["parent_version"] == 3 and "label" in flawed["description"]
        assert flawed["metrics"]["accuracy"] < 0.85
        running = rollouts.current(db, "digits")
        assert running is not None and running["candidate"] == 4 and running["state"] == \
            "running" and running["weight"] == 10
    finally:
        db.dispose()
