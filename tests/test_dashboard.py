"""The dashboard: login by pasted token, the page's models, lineage and charts, ops forms with
CSRF and If-Match, and the SQL time series checked against a direct computation."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import onnx
import pytest

from gateway.web.dashboard.charts import (
    ChartSpec,
    Series,
    TimeAxis,
    choose_window,
    line_chart,
    nice_ticks,
)
from registry import service, timeseries
from registry.outcomes import insert_outcomes, record_feedback
from registry.store import ArtifactStore
from tests.conftest import error_of

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture
def app_headers(role_tokens):
    return {"Authorization": f"Bearer {role_tokens['app']}"}


@pytest.fixture
def lineage(digits, settings, db):
    """digits v4: logreg's graph under new bytes, registered as a child of v1."""
    model = onnx.load_from_string(digits["paths"]["logreg"].read_bytes())
    model.doc_string = "retrained"
    metadata = {"parent_version": 1, "aliases": ["challenger"], "metrics": {"accuracy": 0.97},
                "description": "logreg <retrained> & tuned"}
    record = service.register_version(db, ArtifactStore(settings.model_store), "digits",
                                      model.SerializeToString(), metadata, "tests",
                                      settings.max_model_bytes)
    assert record["version"] == 4
    return record


# --- helpers -----------------------------------------------------------------------------------


def text(response) -> str:
    return response.get_data(as_text=True)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client, token: str):
    form = client.get("/dashboard/login", headers=HTML)
    assert form.status_code == 200
    return client.post("/dashboard/login", data={"token": token, "csrf": csrf_of(text(form))},
                       headers=HTML)


def page(client, query: str = "") -> str:
    response = client.get(f"/dashboard{query}", headers=HTML)
    assert response.status_code == 200, text(response)[:2000]
    return text(response)


def chart(html: str, key: str) -> str:
    match = re.search(rf'<svg class="chart" data-chart="{key}".*?</svg>', html, re.S)
    assert match, f"no {key} chart"
    return match.group(0)


def chart_versions(html: str, key: str) -> set[int]:
    return {int(v) for v in re.findall(r'<g class="series v\d+" data-version="(\d+)"',
                                       chart(html, key))}


def version_row(html: str, version: int) -> str:
    match = re.search(rf'<tr class="version-row[^"]*" data-row-version="{version}"[^>]*>', html)
    assert match, f"no row for v{version}"
    return match.group(0)


def predict(client, headers, row, **extra):
    with client.post("/predict", json={"model": "digits", "inputs": [row]},
                     headers={**headers, **extra}) as response:
        assert response.status_code == 200, response.get_json()
        return response.get_json()


def live_policy(client, ops) -> dict:
    response = client.get("/admin/models/digits/traffic", headers=ops)
    assert response.status_code == 200
    return response.get_json()


def put_policy(client, ops, body):
    response = client.put("/admin/models/digits/traffic", json=body, headers=ops)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def form_fields(html: str, **fields) -> dict[str, str]:
    revision = re.search(r'<form class="ops policy-form".*?name="revision" value="(\d+)"', html,
                         re.S)
    assert revision, "no policy form on the page"
    return {"csrf": csrf_of(html), "revision": revision.group(1), "hours": "24", **fields}


def post_form(client, path: str, data: dict[str, str]):
    return client.post(path, data=data, headers=HTML)


# --- the page ----------------------------------------------------------------------------------


def test_page_shows_models_lineage_and_a_series_per_version(app, client, digits, lineage,
                                                            role_tokens, app_headers):
    X, y = digits["X"], digits["y"]
    ids = {}
    for version in (1, 2, 3):
        for i in range(4):
            rid = f"d{version}-{i}"
            predict(client, app_headers, X[i].tolist(),
                    **{"X-Model-Version": str(version), "X-Request-Id": rid})
            ids[rid] = int(y[i])
    app.extensions["mgw"].outcomes.flush()

    response = login(client, role_tokens["analyst"])
    assert response.status_code == 303 and response.headers["Location"].endswith("/dashboard")
    html = page(client)
    assert 'id="model-digits"' in html
    assert chart_versions(html, "requests") == {1, 2, 3}
    assert {"p50", "p95"} <= set(re.findall(r'data-stat="(p\d+)"', chart(html, "latency")))
    assert chart_versions(html, "latency") == {1, 2, 3}
    assert chart_versions(html, "accuracy") == set()
    assert "no label feedback in this window" in chart(html, "accuracy")
    # lineage: v4 is a child of v1; aliases, metrics and escaped descriptions are shown
    assert 'data-parent="1"' in version_row(html, 4)
    assert 'data-children="4"' in version_row(html, 1)
    assert 'data-parent=""' in version_row(html, 2)
    assert "challenger" in html and "accuracy=0.97" in html
    assert "logreg &lt;retrained&gt; &amp; tuned" in html
    assert lineage["sha256"][:12] in html
    # an analyst sees the comparison but no forms
    assert "policy-form" not in html and "rollback-form" not in html
    assert re.search(r'<table class="comparison">.*?v3</td>', html, re.S)

    items = [{"request_id": rid, "label": label, "reward": float(label % 2)}
             for rid, label in ids.items()]
    feedback = client.post("/feedback", json={"items": items}, headers=app_headers)
    assert {i["status"] for i in feedback.get_json()["items"]} == {202}
    html = page(client, "?model=digits&hours=6")
    assert chart_versions(html, "accuracy") == {1, 2, 3}
    assert chart(html, "accuracy").count('class="band"') == 3
    assert chart_versions(html, "reward") == {1, 2, 3}


def test_shadow_agreement_chart_has_a_series_per_shadow_version(app, client, digits, ops,
                                                                role_tokens, app_headers):
    put_policy(client, ops, {"weights": {"1": 100}, "shadow": {"2": 100, "3": 50}})
    for i in range(20):
        predict(client, app_headers, digits["X"][i].tolist(), **{"X-Request-Id": f"sh-{i}"})
    services = app.extensions["mgw"]
    services.shadows.stop()  # waits for the queued shadow runs
    services.outcomes.flush()
    login(client, role_tokens["analyst"])
    html = page(client)
    assert chart_versions(html, "shadow") == {2, 3}
    assert chart_versions(html, "requests") == {1}
    assert re.search(r'<table class="shadow">.*?v2</td><td>v1</td><td class="num">20<', html,
                     re.S)


def test_page_escapes_what_people_typed_and_sends_safe_headers(client, digits, ops,
                                                               role_tokens):
    put_policy(client, ops, {"weights": {"1": 1}, "reason": "<script>alert(1)</script>"})
    login(client, role_tokens["analyst"])
    response = client.get("/dashboard", headers=HTML)
    html = text(response)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    nonce = re.search(r"style-src 'nonce-([^']+)'", policy).group(1)
    assert f'<style nonce="{nonce}">' in html
    assert response.headers["Cache-Control"] == "no-store"


def test_bad_query_parameters_are_explained(client, digits, role_tokens):
    login(client, role_tokens["analyst"])
    missing = client.get("/dashboard?model=nope", headers=HTML)
    assert missing.status_code == 404 and "model &#39;nope&#39; is not registered" in text(missing)
    for query in ("?hours=0", "?hours=abc", f"?hours={24 * 365}", "?model=Bad%20Name"):
        response = client.get(f"/dashboard{query}", headers=HTML)
        assert response.status_code == 400, query
        assert "Traceback" not in text(response)


# --- login and sessions ------------------------------------------------------------------------


def test_bad_or_wrong_role_tokens_get_no_session(client, digits, role_tokens):
    bad = login(client, "mgw_0123456789abcdef_" + "x" * 43)
    assert bad.status_code == 401 and "unknown or revoked" in text(bad)
    with client.session_transaction() as sess:
        assert "token" not in sess
    malformed = login(client, "not a token")
    assert malformed.status_code == 401 and "malformed" in text(malformed)
    with client.session_transaction() as sess:
        assert "token" not in sess
    app_role = login(client, role_tokens["app"])
    assert app_role.status_code == 403 and "analyst or ops" in text(app_role)
    with client.session_transaction() as sess:
        assert "token" not in sess
    no_csrf = client.post("/dashboard/login", data={"token": role_tokens["analyst"]},
                          headers=HTML)
    assert no_csrf.status_code == 400
    with client.session_transaction() as sess:
        assert "token" not in sess
    assert client.get("/dashboard", headers=HTML).status_code == 303


def test_without_a_session_browsers_are_sent_to_login_and_clients_get_401(client, digits,
                                                                          role_tokens):
    browser = client.get("/dashboard?model=digits", headers=HTML)
    assert browser.status_code == 303
    assert browser.headers["Location"].startswith("/dashboard/login?next=")
    assert "model%3Ddigits" in browser.headers["Location"]
    api = client.get("/dashboard")
    assert api.status_code == 401 and error_of(api)["code"] == "unauthorized"
    posted = client.post("/dashboard/models/digits/traffic", data={"weight-1": "1"})
    assert posted.status_code == 401
    # the header still works for clients that send it, with the usual role rules
    header = client.get("/dashboard", headers={"Authorization":
                                               f"Bearer {role_tokens['analyst']}"})
    assert header.status_code == 200
    wrong_role = client.get("/dashboard", headers={"Authorization":
                                                   f"Bearer {role_tokens['app']}"})
    assert wrong_role.status_code == 403 and error_of(wrong_role)["code"] == "forbidden"


def test_login_returns_to_the_page_asked_for_and_never_off_site(client, digits, role_tokens):
    form = client.get("/dashboard/login?next=/dashboard%3Fmodel%3Ddigits", headers=HTML)
    response = client.post("/dashboard/login", data={
        "token": role_tokens["analyst"], "csrf": csrf_of(text(form)),
        "next": "/dashboard?model=digits"}, headers=HTML)
    assert response.headers["Location"] == "/dashboard?model=digits"
    for target in ("https://evil.example/", "//evil.example/dashboard", "/admin/audit"):
        form = client.get("/dashboard/login", headers=HTML)
        response = client.post("/dashboard/login", data={
            "token": role_tokens["analyst"], "csrf": csrf_of(text(form)), "next": target},
            headers=HTML)
        assert response.headers["Location"] == "/dashboard", target


def test_logout_needs_the_csrf_token_and_ends_the_session(client, digits, role_tokens):
    login(client, role_tokens["analyst"])
    html = page(client)
    assert client.post("/dashboard/logout", data={}, headers=HTML).status_code == 400
    assert client.get("/dashboard", headers=HTML).status_code == 200
    out = client.post("/dashboard/logout", data={"csrf": csrf_of(html)}, headers=HTML)
    assert out.status_code == 303
    assert client.get("/dashboard", headers=HTML).status_code == 303


def test_a_revoked_token_ends_the_session(client, digits, db, settings):
    from registry import tokens

    token = tokens.create_token(db, "analyst", "short-lived", "tests")
    login(client, token)
    assert client.get("/dashboard", headers=HTML).status_code == 200
    tokens.revoke_token(db, "short-lived", "tests")
    import time

    time.sleep(settings.token_cache_seconds + 0.1)
    assert client.get("/dashboard", headers=HTML).status_code == 303
    with client.session_transaction() as sess:
        assert "token" not in sess


def test_with_auth_off_the_page_and_forms_are_open(settings, digits):
    from gateway.web.app import create_app

    app = create_app(settings.with_(auth=False))
    try:
        client = app.test_client()
        html = page(client)
        assert "anonymous · ops" in html and "auth off" in html and "Sign out" not in html
        response = post_form(client, "/dashboard/models/digits/traffic",
                             form_fields(html, **{"weight-2": "100"}))
        assert response.status_code == 303
        assert client.get("/admin/models/digits/traffic").get_json()["updated_by"] == "anonymous"
    finally:
        app.extensions["mgw"].close()


# --- ops actions -------------------------------------------------------------------------------


def test_ops_changes_weights_through_the_form(client, digits, ops, role_tokens):
    login(client, role_tokens["ops"])
    html = page(client)
    assert 'name="weight-3"' in html and 'name="shadow-2"' in html
    response = post_form(client, "/dashboard/models/digits/traffic", form_fields(
        html, **{"weight-1": "70", "weight-2": "30", "shadow-3": "25", "reason": "canary"}))
    assert response.status_code == 303, text(response)[:2000]
    assert response.headers["Location"].startswith("/dashboard?model=digits")
    policy = live_policy(client, ops)
    assert policy["weights"] == {"1": 70, "2": 30} and policy["shadow"] == {"3": 25}
    assert policy["updated_by"] == "test-ops" and policy["reason"] == "canary"
    audit = client.get("/admin/audit?model=digits", headers=ops).get_json()["entries"][0]
    assert audit["actor"] == "test-ops" and audit["action"] == "traffic.set"
    html = page(client, "?model=digits")
    assert "digits: revision 1 is live." in html
    assert "v1: 70 (70.0%)" in html and "v3: 25%" in html


def test_invalid_weights_are_refused_with_the_message(client, digits, ops, role_tokens):
    before = put_policy(client, ops, {"weights": {"1": 100}, "reason": "start"})
    login(client, role_tokens["ops"])
    html = page(client)
    cases = [({"weight-1": "-5"}, "must be a non-negative integer"),
             ({"weight-1": "abc"}, "must be a non-negative integer"),
             ({"weight-1": "0", "weight-2": "0"}, "all weights are zero"),
             ({"weight-1": "1", "shadow-2": "150"}, "from 0 to 100"),
             ({"weight-1": "1", "shadow-1": "10"},
              "cannot have both a weight above 0 and a shadow"),
             ({"weight-9": "1"}, "has no version or alias 9"),
             ({}, "weights must be a non-empty object")]
    for fields, message in cases:
        response = post_form(client, "/dashboard/models/digits/traffic",
                             form_fields(html, **fields))
        body = text(response)
        assert response.status_code == 400, (fields, body[:1000])
        assert message in body, (fields, message)
        assert "Traceback" not in body
        assert live_policy(client, ops)["revision"] == before["revision"]
    # what was typed is kept so the person can fix it
    response = post_form(client, "/dashboard/models/digits/traffic",
                         form_fields(html, **{"weight-1": "-5", "reason": "oops"}))
    assert 'name="weight-1" aria-label="weight of v1" value="-5"' in text(response)


def test_missing_or_wrong_csrf_changes_nothing(client, digits, ops, role_tokens):
    before = put_policy(client, ops, {"weights": {"1": 100}})
    login(client, role_tokens["ops"])
    html = page(client)
    fields = form_fields(html, **{"weight-2": "100"})
    real = csrf_of(html)
    altered = real[:-1] + ("B" if real.endswith("A") else "A")
    for csrf in (None, "", "x" * 43, altered):
        data = {k: v for k, v in fields.items() if k != "csrf"}
        if csrf is not None:
            data["csrf"] = csrf
        response = post_form(client, "/dashboard/models/digits/traffic", data)
        assert response.status_code == 400 and "security token" in text(response)
        rollback = post_form(client, "/dashboard/models/digits/rollback", data)
        assert rollback.status_code == 400
    assert live_policy(client, ops)["revision"] == before["revision"]


def test_an_analyst_cannot_post(client, digits, ops, role_tokens):
    first = put_policy(client, ops, {"weights": {"1": 100}})
    put_policy(client, ops, {"weights": {"2": 100}})
    login(client, role_tokens["analyst"])
    html = page(client)
    data = {"csrf": csrf_of(html), "revision": "2", "weight-3": "100"}
    assert post_form(client, "/dashboard/models/digits/traffic", data).status_code == 403
    assert post_form(client, "/dashboard/models/digits/rollback", data).status_code == 403
    assert live_policy(client, ops)["revision"] == first["revision"] + 1


def test_a_stale_page_gets_a_conflict_not_a_silent_overwrite(client, digits, ops, role_tokens):
    put_policy(client, ops, {"weights": {"1": 100}})
    login(client, role_tokens["ops"])
    html = page(client)
    newer = put_policy(client, ops, {"weights": {"2": 100}, "reason": "someone else"})
    response = post_form(client, "/dashboard/models/digits/traffic",
                         form_fields(html, **{"weight-3": "100"}))
    body = text(response)
    assert response.status_code == 409
    assert "changed while this page was open" in body and "revision 2" in body
    assert live_policy(client, ops)["weights"] == newer["weights"]
    # the re-rendered form carries the live revision and the live weights, not the stale input
    assert form_fields(body)["revision"] == "2"
    assert 'name="weight-2" aria-label="weight of v2" value="100"' in body
    stale_rollback = post_form(client, "/dashboard/models/digits/rollback", form_fields(html))
    assert stale_rollback.status_code == 409
    assert live_policy(client, ops)["revision"] == 2


def test_rollback_through_the_page(client, digits, ops, role_tokens):
    put_policy(client, ops, {"weights": {"1": 100}})
    login(client, role_tokens["ops"])
    assert "rollback-form" not in page(client)  # nothing earlier to roll back to
    stale = post_form(client, "/dashboard/models/digits/rollback",
                      form_fields(page(client), reason="nothing to undo"))
    assert stale.status_code == 409 and "no earlier traffic revision" in text(stale)
    put_policy(client, ops, {"weights": {"1": 50, "2": 50}, "shadow": {"3": 10}})
    html = page(client)
    assert "Roll back to revision 1" in html
    response = post_form(client, "/dashboard/models/digits/rollback",
                         form_fields(html, reason="canary regressed"))
    assert response.status_code == 303
    policy = live_policy(client, ops)
    assert policy["revision"] == 3 and policy["weights"] == {"1": 100}
    assert policy["shadow"] == {} and policy["updated_by"] == "test-ops"
    history = client.get("/admin/models/digits/traffic/history", headers=ops).get_json()
    assert history["revisions"][0]["action"] == "rollback"
    assert history["revisions"][0]["reason"] == "canary regressed"
    assert "rolled back; revision 3 is live" in page(client)


# --- time series in SQL ------------------------------------------------------------------------

BASE = datetime(2026, 3, 1, tzinfo=UTC)  # a whole number of hours since the epoch

PRIMARY = [  # request id, version, seconds after BASE, latency ms, status, predicted label
    ("p1", 1, 300, 0.8, 200, 3),
    ("p2", 1, 1200, 3.0, 200, 4),
    ("p3", 1, 3000, 700.0, 500, None),
    ("p4", 2, 600, 1.5, 200, 3),
    ("p5", 2, 4200, 30.0, 200, 5),
    ("p6", 1, 3900, 12.0, 400, None),
    ("p7", 2, 7140, 2000.0, 200, 7),
    ("p8", 1, 3599.9995, 0.2, 200, 1),  # last instant of the first hour
    ("p9", 2, 3600, 0.4, 200, 1),  # first instant of the second hour
    ("early", 1, -300, 1.0, 200, 1),  # before the window
    ("late", 1, 7200, 1.0, 200, 1),  # at its end (exclusive)
]
SHADOW = [("p1", 3, 301, 3, 200), ("p2", 3, 1201, 9, 200), ("p4", 3, 601, None, 500),
          ("p5", 3, 4201, 5, 200), ("p5", 4, 4202, 1, 200)]
FEEDBACK = [("p1", 3, 1.0), ("p2", 2, None), ("p3", 1, None), ("p4", 3, 0.5),
            ("p5", None, -1.0), ("p7", 7, None), ("p9", 0, 2.0)]


def _outcome(rid, version, kind, offset, latency, status, predicted, model="digits"):
    return {"request_id": rid, "model": model, "version": version, "kind": kind,
            "reason": "weight" if kind == "primary" else "shadow", "revision": None,
            "ts": BASE + timedelta(seconds=offset), "latency_ms": latency, "model_ms": None,
            "status": status, "error_code": None, "prediction": None,
            "predicted_label": predicted, "input_sha256": None, "inputs": None}


@pytest.fixture
def logged(db):
    rows = [_outcome(r, v, "primary", t, ms, s, p) for r, v, t, ms, s, p in PRIMARY]
    rows += [_outcome(r, v, "shadow", t, 1.0, s, p) for r, v, t, p, s in SHADOW]
    rows.append(_outcome("p1", 1, "primary", 300, 1.0, 200, 3, model="other"))
    insert_outcomes(db, rows)
    for rid, label, reward in FEEDBACK:
        record_feedback(db, "digits", rid, label, reward)
    return db


def _direct_primary(bucket_seconds, since, until):
    labels = {rid: (label, reward) for rid, label, reward in FEEDBACK}
    out = {}
    for rid, version, offset, latency, status, predicted in PRIMARY:
        if not since <= offset < until:
            continue
        start = int((BASE.timestamp() + offset) // bucket_seconds) * bucket_seconds
        b = out.setdefault((start, version), {"requests": 0, "errors": 0, "labelled": 0,
                                              "correct": 0, "rewarded": 0, "reward_sum": 0.0,
                                              "ok": 0, "le": [0] * 11})
        label, reward = labels.get(rid, (None, None))
        b["requests"] += 1
        b["errors"] += status >= 500
        if label is not None and predicted is not None:
            b["labelled"] += 1
            b["correct"] += label == predicted
        if reward is not None:
            b["rewarded"] += 1
            b["reward_sum"] += reward
        if status < 400:
            b["ok"] += 1
            for i, edge in enumerate(timeseries.LATENCY_EDGES_MS):
                b["le"][i] += latency <= edge
    return out


@pytest.mark.parametrize("bucket_seconds", [3600, 600, 7200])
def test_primary_series_matches_a_direct_computation(logged, bucket_seconds):
    since, until = BASE, BASE + timedelta(hours=2)
    got = timeseries.primary_series(logged, "digits", since, until, bucket_seconds)
    expected = _direct_primary(bucket_seconds, 0, 7200)
    assert [(b.start, b.version) for b in got] == sorted(expected)
    for b in got:
        e = expected[(b.start, b.version)]
        assert (b.requests, b.errors, b.labelled, b.correct, b.rewarded, b.ok) == (
            e["requests"], e["errors"], e["labelled"], e["correct"], e["rewarded"], e["ok"])
        assert b.reward_sum == pytest.approx(e["reward_sum"], abs=1e-12)
        assert list(b.latency_le) == e["le"]
    if bucket_seconds == 3600:
        first_hour = {(b.start, b.version): b for b in got}
        start = int(BASE.timestamp())
        v1 = first_hour[(start, 1)]  # p1, p2, p3 (500), p8
        assert (v1.requests, v1.errors, v1.ok, v1.labelled, v1.correct) == (4, 1, 3, 2, 1)
        assert v1.accuracy == 0.5 and v1.mean_reward == 1.0
        assert first_hour[(start + 3600, 2)].requests == 3  # p5, p7 and p9 on the hour
        assert first_hour[(start + 3600, 2)].latency(0.95) == 1000.0  # p7 is past the last edge


def test_shadow_series_matches_a_direct_computation(logged):
    got = timeseries.shadow_series(logged, "digits", BASE, BASE + timedelta(hours=2), 3600)
    start = int(BASE.timestamp())
    assert [(b.start, b.version, b.compared, b.agreed, b.errors) for b in got] == [
        (start, 3, 3, 1, 1),  # p1 agrees, p2 does not, p4's shadow failed
        (start + 3600, 3, 1, 1, 0),  # p5
        (start + 3600, 4, 1, 0, 0),
    ]
    assert got[0].agreement == pytest.approx(1 / 3)


def test_histogram_quantile_interpolates_like_prometheus():
    edges = (0.5, 1, 2, 5)
    # latencies 0.3, 0.7, 1.5, 1.6, 30: cumulative counts at the edges, 5 in all
    cumulative = (1, 2, 4, 4)
    assert timeseries.histogram_quantile(0.5, edges, cumulative, 5) == pytest.approx(1.25)
    assert timeseries.histogram_quantile(0.2, edges, cumulative, 5) == pytest.approx(0.5)
    assert timeseries.histogram_quantile(0.1, edges, cumulative, 5) == pytest.approx(0.25)
    assert timeseries.histogram_quantile(0.95, edges, cumulative, 5) == 5.0  # +Inf bucket
    assert timeseries.histogram_quantile(0.5, edges, (0, 0, 0, 0), 0) is None


# --- the chart helper --------------------------------------------------------------------------


def test_window_is_about_24_round_buckets_ending_after_now():
    now = BASE.timestamp() + 1234.5
    window = choose_window(24, now)
    axis = window.axis
    assert axis.step == 3600 and (axis.end - axis.start) // axis.step == 24
    assert axis.start <= now - 23 * 3600 and axis.end > now and axis.end % 3600 == 0
    assert choose_window(1, now).axis.step == 300
    assert choose_window(24 * 90, now).axis.step == 604800


def test_nice_ticks_cover_the_range():
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]
    ticks = nice_ticks(-0.3, 7.2)
    assert ticks[0] <= -0.3 and ticks[-1] >= 7.2


def test_line_chart_escapes_text_and_marks_each_series():
    axis = TimeAxis(start=0, end=7200, step=3600)
    spec = ChartSpec("demo", 'a <b> & "c"', "unit <u>", lambda v: f"{v:.0f}<")
    series = [Series(1, "v1 <x>", ((1800.0, 3.0, "tip <t>"), (5400.0, 4.0, "tip"))),
              Series(2, "v2", ((1800.0, 1.0, "t"),), band=((1800.0, 0.5, 1.5),), stat="p95",
                     dashed=True)]
    svg = str(line_chart(spec, axis, series))
    assert "<b>" not in svg and "a &lt;b&gt; &amp; &#34;c&#34;" in svg
    assert "tip &lt;t&gt;" in svg and "v1 &lt;x&gt;" in svg and "unit &lt;u&gt;" in svg
    assert re.findall(r'class="series v(\d+)" data-version="(\d+)"', svg) == [("1", "1"),
                                                                             ("2", "2")]
    assert 'data-stat="p95"' in svg and 'stroke-dasharray="5 4"' in svg
    empty = str(line_chart(spec, axis, []))
    assert "no data in this window" in empty and "class=\"series" not in empty
