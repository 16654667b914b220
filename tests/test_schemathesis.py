"""Property-based fuzzing of a live `gateway serve` from its own `/openapi.json` (schemathesis).

One real gunicorn gateway (2 workers) holds the three example `digits` versions and an A/B
policy with a shadow. Schemathesis loads the document from the server and, for every
operation, sends the documented examples, the coverage phase's boundary and wrong-type values
and bounded, derandomized fuzzing (valid and invalid data), with an ops token. No answer may be
a 5xx or take longer than the request timeout, and answers must keep to the document:
documented status codes, content types, headers and response schemas; invalid data must be
refused with a 4xx (`negative_data_rejection`); and a route that needs a token must refuse the
same request sent without one (`ignored_auth`). The only check left out is
`positive_data_acceptance`: valid-looking data for a model that does not exist is a 404.
Afterwards, requests gunicorn itself refuses (request line or header too large, malformed)
must get JSON, not gunicorn's HTML page.

It runs schemathesis's own runner (`schemathesis run`, the CLI) rather than
`schemathesis.pytest.from_fixture`: the latter reads `Node._nodeid`, which pytest 9.2 removed,
and the CLI is the runner that has every phase. Its JUnit report is parsed so that the test
also fails if an operation was skipped or never reached.

Nothing is excluded: archive, rollback, alias and batching changes are called like the rest.
The policy covers all three versions, so archiving any of them is refused (409) and nothing the
fuzzer may change leaves the model without a version to serve; readiness probes answer 503
only while a routed version is not loaded, which the fixture rules out before fuzzing starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from gateway.web.openapi_document import build_document
from tests.conftest import server_env
from tests.server import gateway_server

# per operation, in the fuzzing phase; deterministic, so the same cases every run. Set
# MGW_FUZZ_EXAMPLES (e.g. 500) to fuzz harder locally.
MAX_EXAMPLES = int(os.environ.get("MGW_FUZZ_EXAMPLES", "25"))
RUN_TIMEOUT = 300 + 2 * MAX_EXAMPLES  # seconds for the whole schemathesis run
pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 120)
REQUEST_TIMEOUT = 15  # seconds; a slower answer is a hang and fails the run
POLICY = {"weights": {"1": 50, "2": 50}, "shadow": {"3": 100}, "reason": "schemathesis"}
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "ignored_auth",
          "negative_data_rejection", "unsupported_method", "missing_required_header",
          "use_after_free", "ensure_resource_availability")
# Random model names and versions mostly meet a 404 before the interesting code; the fuzzer
# draws the real ones often enough to reach decoding, validation and the registry. Numbers
# sent as text get strings that only look like numbers: "²" is str.isdigit() but int() refuses
# it, and int() refuses more than 4300 digits (each was a 500 before it was fixed).
NUMBERS_AS_TEXT = ["²", "¹²", "-1", "0", "+5", " 7 ", "1e3", "0x1F", "99999999999999999999",
                   "9" * 5000]
CONFIG = f"""
[dictionaries.models]
values = ["digits"]
[dictionaries.versions]
values = ["1", "2", "3", "champion"]
[dictionaries.numbers]
values = {orjson.dumps(NUMBERS_AS_TEXT).decode()}
[parameters]
"path.name" = {{ dictionary = "models", probability = 0.6 }}
"path.ref" = {{ dictionary = "versions", probability = 0.6 }}
"header.X-Model-Version" = {{ dictionary = "versions", probability = 0.5 }}
"body.model" = {{ dictionary = "models", probability = 0.6 }}
"header.If-Match" = {{ dictionary = "numbers", probability = 0.5 }}
"header.Inference-Header-Content-Length" = {{ dictionary = "numbers", probability = 0.5 }}
"query.version" = {{ dictionary = "numbers", probability = 0.5 }}
"query.hours" = {{ dictionary = "numbers", probability = 0.5 }}
"query.limit" = {{ dictionary = "numbers", probability = 0.5 }}
"query.before" = {{ dictionary = "numbers", probability = 0.5 }}
"""


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_until_ready(base: str) -> None:
    """Both workers have the routed versions loaded: 20 ready answers in a row."""
    deadline = time.monotonic() + 60
    streak = 0
    while streak < 20:
        assert time.monotonic() < deadline, "the gateway never became ready"
        streak = streak + 1 if _status(f"{base}/readyz") == 200 else 0
        if streak == 0:
            time.sleep(0.1)


def _put_policy(base: str, headers: dict[str, str]) -> None:
    request = urllib.request.Request(
        f"{base}/admin/models/digits/traffic", method="PUT", data=orjson.dumps(POLICY),
        headers={**headers, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _raw_exchange(port: int, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes no HTTP client would; (status, content type, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), fields.get("Content-Type", ""), body


def _tested_operations(junit: Path) -> dict[str, str]:
    """Operation label -> outcome (`passed`, `failed`, `error`, `skipped`) from the report."""
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return outcomes


def test_no_server_errors_and_answers_as_documented(settings, digits, role_tokens, tmp_path,
                                                    database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("one fuzzing run is enough, on SQLite; the HTTP layer is the same")
    headers = {"Authorization": f"Bearer {role_tokens['ops']}"}
    junit = tmp_path / "schemathesis-junit.xml"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with gateway_server(server_env(settings), cwd=tmp_path) as base:
        _put_policy(base, headers)
        _wait_until_ready(base)
        started = time.monotonic()
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config),
             "run",
             f"{base}/openapi.json", "--url", base,
             "--header", f"Authorization: {headers['Authorization']}",
             "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing",
             "--mode", "all", "--max-examples", str(MAX_EXAMPLES),
             "--generation-deterministic", "--request-timeout", str(REQUEST_TIMEOUT),
             # one worker: with two threads, CPython 3.11.7's ast.parse (which hypothesis
             # calls to describe filters) fails with "AST constructor recursion depth mismatch"
             "--workers", "1", "--suppress-health-check", "all",
             "--report", "junit", "--report-junit-path", str(junit),
             "--output-sanitize", "true", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT,
            check=False)
        elapsed = time.monotonic() - started
        (tmp_path / "schemathesis.log").write_text(run.stdout + run.stderr)
        print(run.stdout[-3000:], run.stderr[-2000:], f"schemathesis took {elapsed:.0f} s")
        assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
        # the fuzzing left the gateway working: still ready, still serving the model
        assert _status(f"{base}/readyz") == 200
        assert _status(f"{base}/v2/models/digits/ready", headers) == 200
        # what gunicorn refuses before the app sees it is answered in JSON too, not HTML
        port = int(base.rsplit(":", 1)[1])
        for request, status in (
                (f"GET /healthz?q={'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n", 414),
                (f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n", 431),
                ("GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400),
                ("GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400)):
            answer_status, answer_type, answer = _raw_exchange(port, request.encode())
            assert (answer_status, answer_type) == (status, "application/json"), answer
            assert set(orjson.loads(answer)["error"]) == {"code", "message"}, answer

    outcomes = _tested_operations(junit)
    documented = {f"{method.upper()} {path}" for path, item in build_document("x")["paths"].items()
                  for method in item}
    # schemathesis leaves out the document's own URL; tests/test_openapi.py fetches it
    assert set(outcomes) == documented - {"GET /openapi.json"}, set(outcomes) ^ documented
    assert set(outcomes.values()) == {"passed"}, outcomes
