"""Hostile clients against a real `gateway serve`: slow senders and absurdly nested JSON.

Expectations: a client that drips its request is cut off with `408` after
`GATEWAY_REQUEST_TIMEOUT`, the worker is not killed for it (same PIDs afterwards) and serves
the next request; a 10,000-deep JSON document is a `400`, not a crash.
"""

from __future__ import annotations

import socket
import threading
import time

import orjson
import pytest

from tests.conftest import server_env
from tests.faults.procs import gunicorn_master, worker_pids
from tests.server import gateway_server

pytestmark = pytest.mark.timeout(180)

TIMEOUT_S = 2
KEEPALIVE_S = 1


def workers_of(base: str) -> set[int]:
    return worker_pids(gunicorn_master(base))


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def predict_request(token: str, row: list[float], close: bool = True) -> bytes:
    """`close`: ask the server to close after answering (`raw_request` reads to the end)."""
    body = orjson.dumps({"model": "digits", "inputs": [row]})
    return (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


def drip(port: int, prefix: bytes, results: list, every: float = 0.3) -> None:
    """Send `prefix`, then one byte of a never-ending header every `every` seconds, and record
    (seconds until the server closed, what it answered)."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    answer = b""
    try:
        sock.sendall(prefix)
        sock.settimeout(every)
        while time.monotonic() - started < 15:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    finally:
        sock.close()
    results.append((time.monotonic() - started, answer))


@pytest.fixture(scope="module")
def served(module_stack):
    """One gateway for the module's tests: each checks the workers it started with are the
    ones left, so a test that broke one would fail itself, not hide behind a fresh server."""
    env = {**server_env(module_stack["settings"]), "GATEWAY_REQUEST_TIMEOUT": str(TIMEOUT_S),
           "GATEWAY_KEEPALIVE_SECONDS": str(KEEPALIVE_S)}
    with gateway_server(env, cwd=module_stack["root"]) as base:
        yield base, module_stack["role_tokens"]["app"], module_stack["digits"]["X"][0].tolist()


@pytest.fixture
def digits(module_stack):
    return module_stack["digits"]


def test_slow_headers_get_408_and_free_the_worker(served):
    base, token, row = served
    port = int(base.rsplit(":", 1)[1])
    before = workers_of(base)
    assert len(before) == 2, before
    # two slow-loris clients at once: with 2 sync workers they hold both, for TIMEOUT_S only
    results: list = []
    threads = [threading.Thread(target=drip, args=(port, b"POST /predict HTTP/1.1\r\nHost: t\r\n"
                                                   b"X-Slow: ", results)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for took, answer in results:
        assert TIMEOUT_S - 0.5 <= took <= TIMEOUT_S + 5, took
        status, body = status_and_body(answer)
        assert status == 408 and body["error"]["code"] == "request_timeout", answer
    status, body = status_and_body(raw_request(port, predict_request(token, row)))
    assert status == 200 and body["version"] in (1, 2, 3)
    assert workers_of(base) == before  # nobody was killed by the master


def test_slow_body_gets_408_in_the_contract_shape(served):
    base, token, row = served
    port = int(base.rsplit(":", 1)[1])
    before = workers_of(base)
    full = predict_request(token, row)
    head, _, body = full.partition(b"\r\n\r\n")
    results: list = []
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + b"\r\n\r\n" + body[:10])
        answer = b""
        sock.settimeout(0.3)
        for byte in body[10:]:  # far slower than the deadline allows
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
        results.append(time.monotonic() - started)
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert results[0] <= TIMEOUT_S + 5, results
    status, payload = status_and_body(answer)
    assert status == 408, answer
    assert payload["error"]["code"] == "request_timeout" and "send it whole" in \
        payload["error"]["message"], payload
    status, payload = status_and_body(raw_request(port, predict_request(token, row)))
    assert status == 200 and payload["outputs"]["label"]
    assert workers_of(base) == before


def test_ten_thousand_deep_json_is_400_and_the_worker_lives(served):
    base, token, row = served
    port = int(base.rsplit(":", 1)[1])
    before = workers_of(base)
    deep = b'{"model": "digits", "inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    request = (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer " + token.encode() + b"\r\n"
               b"Content-Length: " + str(len(deep)).encode() + b"\r\n\r\n" + deep)
    for _ in range(4):  # lands on both workers
        status, payload = status_and_body(raw_request(port, request))
        assert status == 400 and payload["error"]["code"] == "invalid_input", payload
    status, payload = status_and_body(raw_request(port, predict_request(token, row)))
    assert status == 200
    assert workers_of(base) == before


def read_response(sock: socket.socket, pending: bytes = b"") -> tuple[int, dict, dict, bytes]:
    """One response off a kept-alive connection, by its Content-Length: status, headers
    (lower-case names), JSON body, and the bytes after it (a pipelined next response)."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"the server closed the connection; had {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection mid-body")
        rest += chunk
    return int(lines[0].split(" ", 2)[1]), headers, orjson.loads(rest[:length]), rest[length:]


def expected_labels(digits: dict, row: list[float]) -> dict[int, int]:
    """What onnxruntime itself answers for the row, by registered version."""
    import numpy as np
    import onnxruntime as ort

    x = np.asarray([row], dtype=np.float32)
    return {number: int(ort.InferenceSession(str(digits["paths"][name]),
                                             providers=["CPUExecutionProvider"]
                                             ).run(None, {"input": x})[0][0])
            for name, number in digits["versions"].items()}


def test_one_connection_carries_many_requests_and_idle_ones_are_closed(served, digits):
    base, token, row = served
    port = int(base.rsplit(":", 1)[1])
    labels = expected_labels(digits, row)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(5):  # one after another on the same socket
            sock.sendall(predict_request(token, row, close=False))
            status, headers, body, rest = read_response(sock)
            assert status == 200 and rest == b""
            assert headers.get("connection", "keep-alive").lower() != "close", headers
            assert body["outputs"]["label"] == [labels[body["version"]]], body
        # two requests in one write (pipelining): two answers, in order
        sock.sendall(predict_request(token, row, close=False) + predict_request(
            token, [0.0] * 64, close=False))
        status, _, first, rest = read_response(sock)
        status2, _, second, rest = read_response(sock, rest)
        assert (status, status2, rest) == (200, 200, b"")
        assert first["outputs"]["label"] == [labels[first["version"]]]
        assert second["request_id"] != first["request_id"]
        # an error answer keeps the connection too: the next request is served
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n\r\n[]")
        status, _, body, _ = read_response(sock)
        assert status == 400 and body["error"]["code"] == "invalid_input", body
        # `Connection: close` is honoured: the answer, then the end of the stream
        sock.sendall(predict_request(token, row, close=True))
        status, headers, _, rest = read_response(sock)
        assert status == 200 and headers["connection"].lower() == "close"
        assert rest == b"" and sock.recv(100) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(predict_request(token, row, close=False))
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server once idle for KEEPALIVE_S
        assert KEEPALIVE_S - 0.3 <= time.monotonic() - started <= KEEPALIVE_S + 3


def test_more_kept_connections_than_workers_are_all_served(served, digits):
    """12 connections kept open against 2 workers, each sending in turn: every request is
    answered on its own connection (none starves behind another worker's kept ones)."""
    base, token, row = served
    port = int(base.rsplit(":", 1)[1])
    labels = expected_labels(digits, row)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(12)]
    try:
        answered = 0
        for _ in range(10):
            for sock in socks:
                sock.sendall(predict_request(token, row, close=False))
            for sock in socks:
                status, _, body, rest = read_response(sock)
                assert status == 200 and rest == b""
                assert body["outputs"]["label"] == [labels[body["version"]]]
                answered += 1
        assert answered == 120
    finally:
        for sock in socks:
            sock.close()


def test_slow_headers_on_a_kept_connection_get_408_and_free_the_worker(served):
    base, token, row = served
    port = int(base.rsplit(":", 1)[1])
    before = workers_of(base)
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        sock.sendall(predict_request(token, row, close=False))
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        answer = b""
        sock.settimeout(0.3)
        while time.monotonic() - started < 15:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
    finally:
        sock.close()
    assert TIMEOUT_S - 0.5 <= took <= TIMEOUT_S + 5, took
    status, body = status_and_body(answer)
    assert status == 408 and body["error"]["code"] == "request_timeout", answer
    status, body = status_and_body(raw_request(port, predict_request(token, row)))
    assert status == 200 and body["version"] in (1, 2, 3)
    assert workers_of(base) == before
