"""The deployment files (Dockerfile, docker-compose.yml, deploy/) checked by parsing.

No Docker engine or Kubernetes cluster is available where these tests run, so nothing here
builds an image or starts a container. The tests parse every file and check what a wrong edit
would break: the services and their dependencies, the ports that are published, bind mounts
that point at files in the repository, metric names in alert rules and the dashboard (they must
be ones the gateway exports), probes, security settings and the names that tie the Kubernetes
manifests together. Where `promtool`, `kubectl` or `docker compose` happen to be installed they
are run too; otherwise those checks are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML, from the dev extra: a missing parser must fail, not skip, these tests

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCS = ROOT / "docs" / "deployment.md"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
K8S = DEPLOY / "kubernetes"
CERTS_DIR = "deploy/nginx/certs"  # created by each user, documented in docs/deployment.md

NAMESPACE = "model-gateway"
GUNICORN_GRACEFUL_TIMEOUT = 20  # gateway/web/gunicorn_conf.py

# ---- the metrics the gateway exports (gateway/prometheus_metrics.py) -------------------------
COUNTERS = {
    "gateway_requests_total",
    "gateway_request_errors_total",
    "gateway_shadow_runs_total",
    "gateway_shadow_dropped_total",
    "gateway_feedback_labels_total",
    "gateway_model_load_failures_total",
    "gateway_outcome_spool_failures_total",
    "gateway_outcomes_dropped_total",
    "gateway_rollout_decisions_total",
}
GAUGES = {
    "gateway_outcome_queue_depth",
    "gateway_outcome_flush_lag_seconds",
    "gateway_outcome_spool_files",
    "gateway_policy_revision",
    "gateway_policy_weight",
    "gateway_policy_shadow_percent",
    "gateway_drift_psi",
    "gateway_drift_samples",
}
HISTOGRAMS = {"gateway_request_latency_seconds", "gateway_model_latency_seconds"}
KNOWN_METRICS = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
)
# Series Prometheus makes itself; allowed in alert rules only.
PROMETHEUS_SERIES = {"up"}

# ---- helpers ---------------------------------------------------------------------------------

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (or a Grafana query with $variables).

    Strips strings, label matchers, range/subquery brackets, grouping label lists, Grafana
    variables, durations and numbers; what is left and is not a keyword or a function/aggregation
    call is a metric name.
    """
    s = re.sub(r'"(?:\\.|[^"\\])*"', " ", expr)
    s = re.sub(r"'(?:\\.|[^'\\])*'", " ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\$\{?[A-Za-z_]\w*\}?", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\b\d+(?:ms|s|m|h|d|w|y)\b", " ", s)
    s = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b", " ", s)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = match.group(0)
        if token.lower() in PROMQL_WORDS:
            continue
        if s[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(token)
    return names


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def duration_seconds(value: str) -> float:
    """A Prometheus/compose duration such as 90s, 5m, 1h30m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), (
        f"{value!r} is not a duration like 30s, 5m or 1h"
    )
    return sum(float(n) * units[u] for n, u in parts)


def docs_text() -> str:
    assert DOCS.is_file(), "docs/deployment.md is missing"
    return DOCS.read_text(encoding="utf-8")


# ---- the helper itself (a broken extractor would make the name checks pass vacuously) -------

def test_metric_name_extractor_finds_names_and_ignores_the_rest() -> None:
    expr = (
        'sum by (model, version) (rate(foo_total{kind="primary", status=~"5.."}[5m])) / '
        "sum by (model) (rate(foo_total[$__rate_interval])) > 0.02 "
        "and on (model, version) bar_seconds offset 10m < 1e3 or "
        "histogram_quantile(0.99, sum by (le) (rate(baz_bucket{model=~\"$model\"}[5m])))"
    )
    assert metric_names(expr) == {"foo_total", "bar_seconds", "baz_bucket"}
    assert metric_names("gateway_typo_total > 0") == {"gateway_typo_total"}


# ---- docker-compose.yml ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        "docker-compose.yml must have a `services` mapping"
    )
    return data


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    expected = {"gateway", "migrate", "redis", "postgres", "prometheus", "grafana", "nginx"}
    missing = expected - set(compose["services"])
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_compose_gateway_health_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    test = gateway.get("healthcheck", {}).get("test")
    assert test, "the gateway service needs a healthcheck (nginx waits for it)"
    assert "/healthz" in " ".join(test if isinstance(test, list) else [test]), (
        "the gateway healthcheck must ask /healthz"
    )
    depends = gateway.get("depends_on")
    assert isinstance(depends, dict), "gateway.depends_on must use the long form with conditions"
    wanted = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for name, condition in wanted.items():
        got = (depends.get(name) or {}).get("condition")
        assert got == condition, f"gateway must depend on {name} with {condition}, has {got!r}"
    # service_healthy never becomes true for a service without a healthcheck.
    for name in ("postgres", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} needs a healthcheck"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert services["nginx"].get("depends_on"), "nginx must wait for the gateway"


def test_compose_gateway_stops_gracefully(compose: dict[str, Any]) -> None:
    grace = compose["services"]["gateway"].get("stop_grace_period", "10s")
    assert duration_seconds(grace) > GUNICORN_GRACEFUL_TIMEOUT, (
        f"gateway stop_grace_period {grace} must exceed gunicorn's graceful_timeout "
        f"({GUNICORN_GRACEFUL_TIMEOUT}s), or Docker kills workers mid-request"
    )


def test_compose_migrate_runs_db_upgrade_with_the_gateway_image(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate, gateway = services["migrate"], services["gateway"]
    command = migrate.get("command")
    command = command if isinstance(command, list) else str(command).split()
    assert command == ["gateway", "db", "upgrade"], f"migrate runs {command!r}"
    assert migrate.get("image") == gateway.get("image") and migrate.get("build") == gateway.get(
        "build"
    ), "migrate must use the same image as the gateway"
    assert migrate.get("environment") == gateway.get("environment"), (
        "migrate must see the same database settings as the gateway"
    )
    assert (migrate.get("depends_on") or {}).get("postgres", {}).get("condition") == (
        "service_healthy"
    )


def test_compose_gateway_environment(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    env = gateway.get("environment")
    assert isinstance(env, dict), "gateway.environment must be a mapping"
    assert env["GATEWAY_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["GATEWAY_DATABASE_URL"]
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert str(env.get("GATEWAY_AUTH")).lower() == "on"
    targets = {str(v).split(":")[-1] for v in gateway.get("volumes", []) if isinstance(v, str)}
    anonymous = {v["target"] for v in gateway.get("volumes", [])
                 if isinstance(v, dict) and v.get("type") == "volume" and not v.get("source")}
    assert env["GATEWAY_MODEL_STORE"].startswith("s3://"), (
        "replicas share artifacts through the S3 service, not a shared volume"
    )
    assert env["AWS_ENDPOINT_URL"] == "http://s3:8333" and "s3" in compose["services"]
    assert env["GATEWAY_MODEL_CACHE"] in anonymous, (
        "each replica caches in a volume of its own (anonymous, not shared)"
    )
    depends = gateway.get("depends_on") or {}
    assert depends.get("s3-bucket", {}).get("condition") == "service_completed_successfully"
    assert env.get("GATEWAY_STATE_DIR"), "GATEWAY_STATE_DIR must be set"
    assert env["GATEWAY_STATE_DIR"] not in targets, (
        "GATEWAY_STATE_DIR is per container (spool, metrics files): it must not be a shared volume"
    )


def published_ports(service: dict[str, Any]) -> list[str]:
    ports = []
    for port in service.get("ports", []) or []:
        if isinstance(port, dict):
            ports.append(f"{port.get('host_ip', '')}:{port.get('published', '')}:{port['target']}")
        else:
            ports.append(str(port))
    return ports


def test_compose_gateway_port_is_not_published(compose: dict[str, Any]) -> None:
    ports = published_ports(compose["services"]["gateway"])
    assert not ports, (
        f"the gateway publishes {ports}: clients must go through nginx (TLS, body limits) and "
        "/metrics must not be exposed"
    )


def test_compose_only_nginx_is_public(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        ports = published_ports(service)
        if name == "nginx":
            assert ports and all(p.split(":")[-2:] == ["443", "443"] for p in ports), (
                f"nginx must publish 443 and nothing else, publishes {ports}"
            )
        elif name in ("prometheus", "grafana"):
            assert ports, f"{name} should be reachable from the host (on 127.0.0.1)"
            for port in ports:
                assert port.startswith("127.0.0.1:"), (
                    f"{name} publishes {port!r}: bind it to 127.0.0.1 only"
                )
        else:
            assert not ports, f"{name} must not publish ports, publishes {ports}"


def bind_mounts(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, host path, container path) for every bind mount."""
    mounts = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []) or []:
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    mounts.append((name, volume["source"], volume["target"]))
                continue
            source, _, rest = str(volume).partition(":")
            if source.startswith((".", "/", "~")):
                mounts.append((name, source, rest.split(":")[0]))
    return mounts


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(compose)
    assert mounts, "expected bind mounts for the prometheus, grafana and nginx configuration"
    for service, source, _target in mounts:
        relative = source.removeprefix("./").rstrip("/")
        assert not source.startswith(("/", "~")), (
            f"{service} mounts {source}: use paths relative to the repository"
        )
        if relative == CERTS_DIR:
            assert CERTS_DIR in docs_text(), (
                f"{CERTS_DIR} is created by users: docs/deployment.md must say how"
            )
            continue
        assert (ROOT / relative).exists(), f"{service} mounts {source}, which does not exist"


def test_compose_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []) or []:
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                volume_name = volume.split(":")[0]
                assert volume_name in declared, f"{name} uses undeclared volume {volume_name}"


def compose_target(compose: dict[str, Any], service: str, host_path: str) -> str:
    for name, source, target in bind_mounts(compose):
        if name == service and source.removeprefix("./").rstrip("/") == host_path:
            return target
    raise AssertionError(f"{service} does not mount ./{host_path}")


def test_compose_mount_targets_match_the_configuration(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config_flag = next(
        (a for a in prometheus.get("command", []) if str(a).startswith("--config.file=")), None
    )
    assert config_flag, "prometheus needs --config.file"
    config_path = config_flag.split("=", 1)[1]
    target = compose_target(compose, "prometheus", "deploy/prometheus")
    assert config_path == f"{target}/prometheus.yml", (
        f"--config.file={config_path} is not deploy/prometheus/prometheus.yml mounted at {target}"
    )

    dashboards = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")
    paths = {p["options"]["path"] for p in dashboards["providers"]}
    assert compose_target(compose, "grafana", "deploy/grafana/dashboards") in paths, (
        "the dashboards provider must read the directory deploy/grafana/dashboards is mounted at"
    )
    assert compose_target(compose, "grafana", "deploy/grafana/provisioning") == (
        "/etc/grafana/provisioning"
    )

    conf = NGINX_CONF.read_text(encoding="utf-8")
    assert compose_target(compose, "nginx", "deploy/nginx/nginx.conf") == "/etc/nginx/nginx.conf"
    certs_target = compose_target(compose, "nginx", CERTS_DIR)
    for directive in ("ssl_certificate", "ssl_certificate_key"):
        match = re.search(rf"^\s*{directive}\s+(\S+);", conf, re.MULTILINE)
        assert match, f"nginx.conf lacks {directive}"
        assert match.group(1).startswith(certs_target + "/"), (
            f"{directive} {match.group(1)} is not in the mounted certs dir {certs_target}"
        )


def test_compose_config_with_docker_compose_if_available() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"


# ---- nginx -----------------------------------------------------------------------------------

def nginx_block(conf: str, header: str) -> str:
    """The text between the braces of the block that starts with `header`."""
    start = conf.find(header)
    assert start >= 0, f"nginx.conf has no `{header}` block"
    depth, i = 0, conf.index("{", start)
    for j in range(i, len(conf)):
        if conf[j] == "{":
            depth += 1
        elif conf[j] == "}":
            depth -= 1
            if depth == 0:
                return conf[i + 1:j]
    raise AssertionError(f"unbalanced braces after `{header}`")


def size_mb(value: str) -> float:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"cannot read size {value!r}"
    factor = {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[match.group(2).lower()]
    return int(match.group(1)) * factor


def test_nginx_terminates_tls_and_proxies_to_the_gateway() -> None:
    raw = NGINX_CONF.read_text(encoding="utf-8")
    conf = re.sub(r"#[^\n]*", "", raw)
    assert conf.count("{") == conf.count("}"), "nginx.conf has unbalanced braces"
    upstream = nginx_block(conf, "upstream gateway")
    assert re.search(r"\bserver\s+gateway:8000\b", upstream), "upstream must be gateway:8000"
    server = nginx_block(conf, "server {")
    assert re.search(r"^\s*listen\s+443\s+ssl\b", server, re.MULTILINE), "listen 443 ssl"
    assert "proxy_pass http://gateway" in server
    assert re.search(r"proxy_set_header\s+X-Request-Id\s+\$http_x_request_id", server), (
        "X-Request-Id must be passed through to the gateway"
    )
    for directive in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        assert re.search(rf"\b{directive}\s+\d+s;", server), f"nginx.conf lacks {directive}"

    admin = nginx_block(server, "location /admin/")
    server_level = server.replace(admin, "")
    default = re.search(r"client_max_body_size\s+(\w+);", server_level)
    upload = re.search(r"client_max_body_size\s+(\w+);", admin)
    assert default and upload, "client_max_body_size must be set for the server and for /admin/"
    assert size_mb(default.group(1)) <= 16, f"default body limit {default.group(1)} is too big"
    assert size_mb(upload.group(1)) >= 512, (
        f"/admin/ body limit {upload.group(1)} is below GATEWAY_MAX_MODEL_BYTES (512 MiB)"
    )
    # proxy_set_header in a location silently drops every server-level one.
    for location in re.findall(r"location[^{]*\{[^}]*\}", server):
        assert "proxy_set_header" not in location, (
            "set proxy headers at server level only (nginx inheritance)"
        )


# ---- Prometheus ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    data = load_yaml(PROMETHEUS_DIR / "alerts.yml")
    assert isinstance(data, dict) and data.get("groups"), "alerts.yml must have groups"
    rules = []
    for group in data["groups"]:
        assert group.get("name"), "every rule group needs a name"
        assert group.get("rules"), f"group {group.get('name')} has no rules"
        rules.extend(group["rules"])
    return rules


def test_prometheus_config_parses_and_its_rule_files_exist() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    rule_files = config.get("rule_files")
    assert rule_files, "prometheus.yml must load the alert rules"
    for rule_file in rule_files:
        assert not Path(rule_file).is_absolute(), (
            f"{rule_file}: use a path relative to prometheus.yml so it works in and out of Docker"
        )
        assert (PROMETHEUS_DIR / rule_file).is_file(), f"rule file {rule_file} does not exist"
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    gateway = jobs.get("model-gateway")
    assert gateway, "prometheus.yml needs a scrape job named model-gateway (the alerts use it)"
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for c in gateway.get("static_configs", []) for t in c.get("targets", [])]
    targets += [
        f"{name}:{c.get('port')}" for c in gateway.get("dns_sd_configs", []) for name in c["names"]
    ]
    assert "gateway:8000" in targets, f"the gateway job scrapes {targets}, not gateway:8000"


def test_alert_rules_are_complete(alert_rules: list[dict[str, Any]]) -> None:
    names = [rule.get("alert") for rule in alert_rules]
    assert len(names) == len(set(names)), f"duplicate alert names in {names}"
    for rule in alert_rules:
        name = rule.get("alert")
        assert name, f"a rule has no alert name: {rule}"
        assert str(rule.get("expr", "")).strip(), f"{name} has no expr"
        assert "for" in rule, f"{name} has no `for`"
        duration_seconds(rule["for"])
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, (
            f"{name} needs labels.severity critical|warning|info"
        )
        annotations = rule.get("annotations", {})
        assert str(annotations.get("summary", "")).strip(), f"{name} needs annotations.summary"
        assert str(annotations.get("description", "")).strip(), (
            f"{name} needs annotations.description"
        )


def test_alert_rules_use_only_exported_metrics(alert_rules: list[dict[str, Any]]) -> None:
    allowed = KNOWN_METRICS | PROMETHEUS_SERIES
    for rule in alert_rules:
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in its expr"
        unknown = used - allowed
        assert not unknown, f"{rule['alert']} uses metrics the gateway does not export: {unknown}"


def rule_by_metric(rules: list[dict[str, Any]], metric: str, needle: str = "") -> dict[str, Any]:
    for rule in rules:
        if metric in metric_names(rule["expr"]) and needle in rule["expr"]:
            return rule
    raise AssertionError(f"no alert rule uses {metric}" + (f" with {needle!r}" if needle else ""))


def test_required_alerts_and_thresholds(alert_rules: list[dict[str, Any]]) -> None:
    def squash(rule: dict[str, Any]) -> str:
        return re.sub(r"\s+", " ", rule["expr"])

    errors = rule_by_metric(alert_rules, "gateway_requests_total", 'status=~"5..')
    assert "> 0.02" in squash(errors) and duration_seconds(errors["for"]) == 300, (
        "5xx ratio alert: > 0.02 for 5m"
    )
    assert "sum by (model, version)" in squash(errors), "the error ratio is per model/version"

    latency = rule_by_metric(alert_rules, "gateway_request_latency_seconds_bucket")
    assert "histogram_quantile(0.99" in squash(latency) and "> 0.25" in squash(latency)
    assert duration_seconds(latency["for"]) == 600, "p99 latency alert: for 10m"

    accuracy = rule_by_metric(alert_rules, "gateway_feedback_labels_total")
    text = squash(accuracy)
    assert 'correct="true"' in text and "[1h]" in text and "max by (model)" in text
    assert "- 0.02" in text, "accuracy alert compares with the best version minus 0.02"
    assert re.search(r">= ?\d{2,}", text), "accuracy alert needs a minimum sample count guard"

    lag = rule_by_metric(alert_rules, "gateway_outcome_flush_lag_seconds")
    assert "> 60" in squash(lag) and duration_seconds(lag["for"]) == 120

    spool = rule_by_metric(alert_rules, "gateway_outcome_spool_files")
    assert "> 0" in squash(spool) and duration_seconds(spool["for"]) == 600

    loads = rule_by_metric(alert_rules, "gateway_model_load_failures_total")
    assert "increase(" in squash(loads)

    for outcomes_at_risk in ("gateway_outcome_spool_failures_total",
                             "gateway_outcomes_dropped_total"):
        rule = rule_by_metric(alert_rules, outcomes_at_risk)
        assert "increase(" in squash(rule) and "> 0" in squash(rule), outcomes_at_risk
        assert rule["labels"]["severity"] == "critical", outcomes_at_risk


def test_alert_rules_parse_as_promql_if_a_parser_is_installed(
    alert_rules: list[dict[str, Any]],
) -> None:
    promql_parser = pytest.importorskip("promql_parser")
    for rule in alert_rules:
        try:
            promql_parser.parse(rule["expr"])
        except Exception as exc:
            pytest.fail(f"{rule['alert']}: PromQL does not parse: {exc}")


def test_promtool_accepts_rules_and_config_if_installed() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR, timeout=60
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


# ---- Grafana ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def datasource_uid() -> str:
    data = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    sources = [s for s in data.get("datasources", []) if s.get("type") == "prometheus"]
    assert len(sources) == 1, "provision exactly one Prometheus datasource"
    assert sources[0].get("uid"), "the provisioned datasource needs a fixed uid"
    assert sources[0].get("url") == "http://prometheus:9090", (
        "the datasource must point at the compose service prometheus:9090"
    )
    return str(sources[0]["uid"])


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    path = GRAFANA_DIR / "dashboards" / "model-gateway.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        pytest.fail(f"{path.relative_to(ROOT)} is not valid JSON: {exc}")


def test_dashboard_provider_is_configured() -> None:
    data = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")
    providers = data.get("providers")
    assert providers and all(p.get("type") == "file" for p in providers)
    assert all(p.get("options", {}).get("path") for p in providers)


def test_dashboard_structure(dashboard: dict[str, Any], datasource_uid: str) -> None:
    assert isinstance(dashboard.get("schemaVersion"), int), "dashboard needs schemaVersion"
    assert dashboard.get("uid") and dashboard.get("title")
    panels = dashboard.get("panels")
    assert panels, "dashboard has no panels"
    ids = [panel.get("id") for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel.get('id')} has no title"
        grid = panel.get("gridPos", {})
        assert all(isinstance(grid.get(k), int) for k in "hwxy"), f"{title}: gridPos h/w/x/y"
        assert grid["x"] + grid["w"] <= 24, f"{title} is wider than the 24-column grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title
        assert panel.get("datasource", {}).get("uid") == datasource_uid, (
            f"{title}: datasource uid must be the provisioned {datasource_uid!r}"
        )
        targets = panel.get("targets")
        assert targets, f"panel {title!r} has no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), f"{title}: refIds"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"{title}: a target has no expr"
            assert target.get("datasource", {}).get("uid") == datasource_uid, (
                f"{title}: target datasource uid must be {datasource_uid!r}"
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            assert variable.get("datasource", {}).get("uid") == datasource_uid, (
                f"variable {variable.get('name')}: datasource uid must be {datasource_uid!r}"
            )


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_uses_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    for title, expr in dashboard_exprs(dashboard):
        used = metric_names(expr)
        assert used, f"{title}: no metric in {expr!r}"
        unknown = used - KNOWN_METRICS
        assert not unknown, f"panel {title!r} uses metrics the gateway does not export: {unknown}"
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.match(r"label_values\(\s*([A-Za-z_:][\w:]*)", query)
        if match:
            assert match.group(1) in KNOWN_METRICS, f"variable {variable['name']}: {query}"


def test_dashboard_covers_the_required_views(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs(dashboard)))
    exprs = " ".join(e for _, e in dashboard_exprs(dashboard))
    required = {
        "gateway_requests_total": "requests/s and error ratio by version",
        "gateway_request_latency_seconds_bucket": "p50/p99 latency",
        "gateway_shadow_runs_total": "shadow runs",
        "gateway_shadow_dropped_total": "shadow dropped",
        "gateway_feedback_labels_total": "accuracy by version",
        "gateway_outcome_queue_depth": "outcome queue depth",
        "gateway_outcome_flush_lag_seconds": "flush lag",
        "gateway_policy_weight": "policy weights",
    }
    for metric, view in required.items():
        assert metric in used, f"the dashboard has no panel for {view} ({metric})"
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.99" in exprs


def test_dashboard_exprs_parse_as_promql_if_a_parser_is_installed(
    dashboard: dict[str, Any],
) -> None:
    promql_parser = pytest.importorskip("promql_parser")
    for title, expr in dashboard_exprs(dashboard):
        concrete = expr.replace("$__rate_interval", "5m").replace("$model", ".*")
        try:
            promql_parser.parse(concrete)
        except Exception as exc:
            pytest.fail(f"panel {title!r}: PromQL does not parse: {exc}")


# ---- Kubernetes ------------------------------------------------------------------------------

NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml"}


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert files, "deploy/kubernetes has no manifests"
    return {path.name: load_yaml_docs(path) for path in files}


def k8s_object(manifests: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = [doc for docs in manifests.values() for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def test_every_manifest_has_kind_and_name(manifests: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in manifests.items():
        assert docs, f"{name} is empty"
        for doc in docs:
            assert doc.get("apiVersion"), f"{name}: a document has no apiVersion"
            assert doc.get("kind"), f"{name}: a document has no kind"
            assert doc.get("metadata", {}).get("name"), f"{name}: {doc['kind']} has no name"
            if doc["kind"] not in ("Namespace", "Kustomization"):
                assert doc["metadata"].get("namespace") == NAMESPACE, (
                    f"{name}: {doc['kind']} must be in namespace {NAMESPACE}"
                )


def test_kustomization_lists_exactly_the_manifests(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    kustomization = manifests["kustomization.yaml"][0]
    resources = kustomization.get("resources", [])
    assert len(resources) == len(set(resources)), "kustomization lists a file twice"
    present = set(manifests) - NOT_IN_KUSTOMIZATION
    assert set(resources) == present, (
        f"kustomization.yaml resources {sorted(resources)} != files {sorted(present)}"
    )
    assert "secret.example.yaml" in manifests, "secret.example.yaml shows which Secret to create"
    assert "secret.example.yaml" not in resources, (
        "secret.example.yaml holds placeholders: applying it would overwrite the real Secret"
    )
    assert kustomization.get("namespace") == NAMESPACE


def test_kustomize_builds_if_kubectl_is_installed() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert result.returncode == 0, f"kubectl kustomize failed:\n{result.stderr}"
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Job"):
        assert kind in kinds, f"kustomize output has no {kind}"


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(deployment)["containers"]
    assert len(containers) == 1, "the gateway pod has one container"
    return containers[0]


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        assert port in named, f"probe port {port!r} is not a named container port"
        return int(named[port])
    return int(port)


def test_deployment_probes(manifests: dict[str, list[dict[str, Any]]]) -> None:
    deployment = k8s_object(manifests, "Deployment")
    container = main_container(deployment)
    assert 8000 in [p["containerPort"] for p in container.get("ports", [])]
    for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container.get(probe_name)
        assert probe, f"the gateway container has no {probe_name}"
        assert probe["httpGet"]["path"] == path, f"{probe_name} must ask {path}"
        assert probe_port(container, probe) == 8000, f"{probe_name} must use port 8000"
    command = container.get("command", []) + container.get("args", [])
    assert command[:2] == ["gateway", "serve"] and "0.0.0.0:8000" in command, (
        f"the container must run `gateway serve --bind 0.0.0.0:8000`, runs {command}"
    )


def test_deployment_security_and_shutdown(manifests: dict[str, list[dict[str, Any]]]) -> None:
    deployment = k8s_object(manifests, "Deployment")
    spec = pod_spec(deployment)
    container = main_container(deployment)
    pod_security = spec.get("securityContext", {})
    container_security = container.get("securityContext", {})
    assert (
        container_security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
    ), "runAsNonRoot must be true"
    assert container_security.get("readOnlyRootFilesystem") is True
    assert container_security.get("allowPrivilegeEscalation") is False

    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = 0.0
    command = pre_stop.get("exec", {}).get("command", [])
    if command[:1] == ["sleep"]:
        sleep = float(command[1])
    elif "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    assert sleep > 0, "a preStop sleep lets endpoint removal propagate before SIGTERM"
    grace = spec.get("terminationGracePeriodSeconds", 30)
    assert grace > GUNICORN_GRACEFUL_TIMEOUT + sleep, (
        f"terminationGracePeriodSeconds {grace} must exceed preStop sleep {sleep} + gunicorn "
        f"graceful_timeout {GUNICORN_GRACEFUL_TIMEOUT}"
    )


def test_deployment_resources_and_replicas(manifests: dict[str, list[dict[str, Any]]]) -> None:
    deployment = k8s_object(manifests, "Deployment")
    assert deployment["spec"].get("replicas") == 3
    resources = main_container(deployment).get("resources", {})
    for kind in ("requests", "limits"):
        assert str(resources.get(kind, {}).get("cpu")) == "2", f"{kind}.cpu must be 2"
        assert resources.get(kind, {}).get("memory"), f"{kind}.memory must be set"


def test_deployment_volumes_match_the_configuration(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = k8s_object(manifests, "Deployment")
    spec = pod_spec(deployment)
    container = main_container(deployment)
    config = k8s_object(manifests, "ConfigMap")
    secret = k8s_object(manifests, "Secret")

    sources = {
        ("configMapRef" if "configMapRef" in ref else "secretRef"): next(iter(ref.values()))["name"]
        for ref in container.get("envFrom", [])
    }
    assert sources.get("configMapRef") == config["metadata"]["name"], "envFrom the ConfigMap"
    assert sources.get("secretRef") == secret["metadata"]["name"], (
        "envFrom the Secret named in secret.example.yaml"
    )
    assert {"GATEWAY_DATABASE_URL", "GATEWAY_REDIS_URL"} <= set(secret.get("stringData", {}))
    for key in ("GATEWAY_DATABASE_URL", "GATEWAY_REDIS_URL"):
        assert key not in config["data"], f"{key} holds credentials: Secret, not ConfigMap"

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert config["data"]["GATEWAY_MODEL_STORE"].startswith("s3://"), (
        "replicas share artifacts through object storage, not a ReadWriteMany volume"
    )
    cache = mounts.get(config["data"]["GATEWAY_MODEL_CACHE"])
    assert cache and "emptyDir" in volumes[cache], "each pod caches artifacts in an emptyDir"
    limit = volumes[cache]["emptyDir"]["sizeLimit"]
    assert limit.endswith("Gi") and int(config["data"]["GATEWAY_MODEL_CACHE_BYTES"]) < (
        int(limit[:-2]) * 1024 ** 3), "the cache bound must stay under the emptyDir's limit"
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GATEWAY_ARTIFACT_KEY"} <= set(
        secret.get("stringData", {})), "the bucket's credentials and the key are secrets"
    state = mounts.get(config["data"]["GATEWAY_STATE_DIR"])
    assert state and "emptyDir" in volumes[state], (
        "GATEWAY_STATE_DIR must be a per-pod emptyDir (the root filesystem is read-only)"
    )
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def test_service_selects_the_deployment_pods(manifests: dict[str, list[dict[str, Any]]]) -> None:
    deployment = k8s_object(manifests, "Deployment")
    service = k8s_object(manifests, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= pod_labels.items(), (
        f"Service selector {selector} does not match pod labels {pod_labels}"
    )
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    ports = service["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in ports] in ([(80, 8000)], [(80, "http")])
    annotations = service["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/port") == "8000"
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"

    pdb = k8s_object(manifests, "PodDisruptionBudget")
    assert pdb["spec"].get("minAvailable") == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), (
        "the PodDisruptionBudget must select the gateway pods"
    )


def test_hpa_targets_the_deployment(manifests: dict[str, list[dict[str, Any]]]) -> None:
    deployment = k8s_object(manifests, "Deployment")
    hpa = k8s_object(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"], (
        f"the HPA scales {target}, not Deployment {deployment['metadata']['name']}"
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    cpu = [m for m in hpa["spec"]["metrics"] if m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_migrate_job_runs_db_upgrade(manifests: dict[str, list[dict[str, Any]]]) -> None:
    job = k8s_object(manifests, "Job")
    deployment = k8s_object(manifests, "Deployment")
    containers = pod_spec(job)["containers"]
    assert len(containers) == 1
    command = containers[0].get("command", []) + containers[0].get("args", [])
    assert command == ["gateway", "db", "upgrade"], f"the migration job runs {command}"
    assert containers[0]["image"] == main_container(deployment)["image"], (
        "the migration must run the same image as the gateway"
    )
    assert containers[0].get("envFrom") == main_container(deployment).get("envFrom")
    assert pod_spec(job).get("restartPolicy") in ("OnFailure", "Never")


# ---- Dockerfile ------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    froms = [args for ins, args in dockerfile_instructions() if ins == "FROM"]
    assert len(froms) >= 2, "build the wheel in one stage and run it in another"
    for args in froms:
        assert args.split()[0] == "python:3.11-slim", f"FROM {args}: use python:3.11-slim"
    runs = " ".join(args for ins, args in dockerfile_instructions() if ins == "RUN")
    assert "pip wheel" in runs and "pip install" in runs
    assert "[dev]" not in runs, "the image must not install the dev extra"


def test_dockerfile_runs_as_non_root_and_matches_kubernetes(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    users = [args for ins, args in dockerfile_instructions() if ins == "USER"]
    assert users, "the Dockerfile needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), f"the final USER is {users[-1]}"
    deployment = k8s_object(manifests, "Deployment")
    run_as = pod_spec(deployment).get("securityContext", {}).get("runAsUser")
    assert run_as is None or str(run_as) == user, (
        f"Kubernetes runs as uid {run_as}, the image's user is {user}"
    )


def test_dockerfile_health_port_command_and_no_remote_add() -> None:
    instructions = dockerfile_instructions()
    healthchecks = [args for ins, args in instructions if ins == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1], "HEALTHCHECK must ask /healthz"
    assert "curl" not in healthchecks[-1], "python:3.11-slim has no curl"
    exposed = " ".join(args for ins, args in instructions if ins == "EXPOSE").split()
    assert "8000" in exposed or "8000/tcp" in exposed, "EXPOSE 8000"
    for ins, args in instructions:
        if ins == "ADD":
            assert not re.search(r"\bhttps?://", args), f"ADD fetches a remote file: {args}"
    cmd = [args for ins, args in instructions if ins == "CMD"]
    assert cmd, "the Dockerfile needs a CMD"
    command = json.loads(cmd[-1])
    assert command[:2] == ["gateway", "serve"] and "0.0.0.0:8000" in command, (
        f"CMD must be `gateway serve --bind 0.0.0.0:8000 ...`, is {command}"
    )


def dockerignore_patterns() -> list[str]:
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing"
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_dockerignore_excludes_local_state() -> None:
    patterns = dockerignore_patterns()
    for required in (".venv", ".demo", ".git", ".pytest_cache", ".mypy_cache"):
        assert required in patterns, f".dockerignore must exclude {required}"


def test_dockerfile_copies_files_that_the_context_contains() -> None:
    patterns = [p for p in dockerignore_patterns() if not p.startswith("!")]
    copies = [args for ins, args in dockerfile_instructions() if ins == "COPY"]
    local = [args for args in copies if not args.startswith("--from")]
    assert local, "the build stage must COPY the sources"
    for args in local:
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            for pattern in patterns:
                assert not fnmatch(source.rstrip("/"), pattern.rstrip("/")), (
                    f"COPY {source} but .dockerignore excludes it ({pattern})"
                )


# ---- docs ------------------------------------------------------------------------------------

def test_docs_state_how_the_files_are_checked() -> None:
    text = docs_text()
    statement = (
        "These files are checked by parsing in CI (tests/test_deploy_files.py); no Docker engine "
        "or cluster is available there, so they have not been run."
    )
    prose = " ".join(re.sub(r"^\s*>\s?", "", text, flags=re.MULTILINE).split())  # unquote
    assert statement in prose, "docs/deployment.md must state how it is tested"
    assert "docker compose exec gateway gateway token create" in text
    assert "openssl req" in text, "docs must show how to make a self-signed certificate"
    conf = NGINX_CONF.read_text(encoding="utf-8")
    for cert in re.findall(r"ssl_certificate(?:_key)?\s+\S*/([^/\s]+);", conf):
        assert f"{CERTS_DIR}/{cert}" in text, f"docs must say to create {CERTS_DIR}/{cert}"


def test_docs_explain_every_alert_and_manifest(
    alert_rules: list[dict[str, Any]], manifests: dict[str, list[dict[str, Any]]]
) -> None:
    text = docs_text()
    for rule in alert_rules:
        assert rule["alert"] in text, f"docs/deployment.md does not explain {rule['alert']}"
    for name in manifests:
        assert name in text, f"docs/deployment.md does not mention deploy/kubernetes/{name}"
