"""gunicorn's sync worker with a deadline on receiving each request (slow-loris defence).

A sync worker serves one connection at a time, and stock gunicorn reads a request with no
time limit of its own: a client that drips its headers a byte at a time holds the worker until
the master's heartbeat timeout kills it. Here every accepted connection gets a deadline of
`GATEWAY_REQUEST_TIMEOUT` seconds for the whole request, headers and body:

- headers not complete in time: the worker answers `408 request_timeout` itself and drops the
  connection (the application never sees the request);
- body not complete in time: the read raises `RequestReceiveTimeout` inside the application,
  which answers `408` in the contract's JSON shape (`gateway.web.app`'s error handlers).

Either way the worker is free again after at most the timeout, and is never killed for it.
Sending the response is bounded by the same timeout per call (a client that stops reading).
This module must stay importable in gunicorn's master without loading the application.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

log = logging.getLogger(__name__)

HEADERS_END = b"\r\n\r\n"
TIMEOUT_BODY = (b'{"error":{"code":"request_timeout","message":"the request was not received '
                b'in time; send it whole without pausing"}}')


# gunicorn's own answers to requests it cannot parse, by status: the contract's codes
GUNICORN_ERROR_CODES = {400: "invalid_input", 403: "forbidden", 414: "uri_too_long",
                        417: "expectation_failed", 431: "headers_too_large",
                        500: "internal", 501: "not_implemented"}


def write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's `util.write_error`, in the contract's JSON shape instead of an HTML page.

    gunicorn answers by itself, before the application sees anything, a request it cannot
    parse: a request line longer than `limit_request_line` (414), too many or too large
    headers (431), a malformed request line, header or chunk (400). Its page is HTML, which
    the contract rules out on every route. Installed in each worker by `install_json_errors`.
    """
    code = GUNICORN_ERROR_CODES.get(status, "invalid_input" if status < 500 else "internal")
    text = message or ("internal error; see the gateway's log" if status >= 500 else reason)
    body = json.dumps({"error": {"code": code, "message": text}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install_json_errors() -> None:
    """Make this worker process answer unparseable requests with `write_json_error`. Every
    worker class reaches `util.write_error` through the module, so one assignment covers
    sync and gthread alike; it is done after the fork, in the worker, never in the master."""
    util.write_error = write_json_error


class RequestReceiveTimeout(TimeoutError):
    """The body did not arrive within the deadline; the application answers it with 408."""


class DeadlineSocket:
    """A client socket whose reads share one deadline; everything else is the socket's own.

    Only `recv` is intercepted, because gunicorn reads requests through `sock.recv` alone.
    It watches for the blank line that ends the headers, so that an expiry before it can be
    answered here and an expiry after it is left to the application.
    """

    def __init__(self, sock: socket.socket, seconds: float,
                 heartbeat: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._seconds = seconds
        self._heartbeat = heartbeat
        self._beat_at = time.monotonic()
        self._deadline = time.monotonic() + seconds
        self._tail = b""
        self._headers_done = False
        self._caller_timeout: float | None = None

    def settimeout(self, value: float | None) -> None:
        self._caller_timeout = value
        self._sock.settimeout(value)

    def recv(self, size: int) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return self._expired()
        wait = remaining if self._caller_timeout is None else min(remaining,
                                                                  self._caller_timeout)
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            if self._deadline - time.monotonic() <= 0:
                return self._expired()
            raise
        if not self._headers_done:
            seen = self._tail + data
            self._headers_done = HEADERS_END in seen
            self._tail = seen[-3:]
        return data

    def _expired(self) -> bytes:
        if self._headers_done:  # the application is reading the body: it answers 408
            raise RequestReceiveTimeout(
                f"the request was not received within {self._seconds:g} s")
        log.warning("closing a connection that sent no complete request headers within %g s",
                    self._seconds)
        response = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\n\r\n"
                    + TIMEOUT_BODY)
        try:
            self._sock.settimeout(1.0)
            self._sock.sendall(response)
        except OSError:
            pass
        self._headers_done = True  # nothing more to say on this connection
        return b""  # the parser sees the end of the stream and drops the connection quietly

    def sendall(self, data: Any) -> None:
        """Each write is bounded by the timeout on its own, whatever is left of the read's.

        A response still being written is progress, so it tells the master the worker is alive
        (at most once a second). Stock sync workers only do that between requests, so a long
        streamed response (an outcomes export of a few hundred thousand rows) would outlive the
        master's `timeout` and be killed mid-body. A worker stuck without writing is still
        killed.
        """
        self._sock.settimeout(self._seconds)
        self._sock.sendall(data)
        if self._heartbeat is not None and time.monotonic() - self._beat_at >= 1.0:
            self._beat_at = time.monotonic()
            self._heartbeat()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class DeadlineSyncWorker(SyncWorker):
    """`sync` with a per-request receive deadline; the default worker of `gateway serve`."""

    def init_process(self) -> None:
        from gateway.settings import Settings  # the same reading as the app's, once

        self.request_timeout = float(Settings.from_env().request_timeout_seconds)
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        if self.cfg.is_ssl:  # TLS is terminated in front (docs/security.md); keep stock
            super().accept(listener)
            return
        client, addr = listener.accept()
        client.setblocking(True)
        util.close_on_exec(client)
        self.handle(listener, DeadlineSocket(client, self.request_timeout, self.notify), addr)
