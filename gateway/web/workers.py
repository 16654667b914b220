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

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
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

    def next_request(self) -> None:
        """A kept-alive connection starts another request: a fresh deadline for it."""
        self._deadline = time.monotonic() + self._seconds
        self._tail = b""
        self._headers_done = False
        self._caller_timeout = None

    @property
    def raw(self) -> socket.socket:
        return self._sock

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


@dataclass
class Kept:
    """A connection between requests: its socket, its parser (which may hold bytes of the
    next request already read) and when it went idle."""

    sock: DeadlineSocket
    addr: Any
    listener: socket.socket
    parser: Any = None
    idle_since: float = 0.0


class DeadlineSyncWorker(SyncWorker):
    """`sync` with a per-request receive deadline and keep-alive; the default worker of
    `gateway serve`.

    Keep-alive without threads: one loop waits (`selectors`) on the listener and on the
    connections kept between requests, and serves whichever is readable, one request at a
    time, on this same thread; there is no hand-off between a poller and a pool (what made
    gthread slower here). A connection is kept for `keepalive` seconds of idleness, at most
    `worker_connections` of them; `keepalive = 0`, TLS or several listeners give stock `sync`
    behaviour (one request per connection).
    """

    def init_process(self) -> None:
        from gateway.settings import Settings  # the same reading as the app's, once

        self.request_timeout = float(Settings.from_env().request_timeout_seconds)
        self.kept: dict[int, Kept] = {}
        super().init_process()

    def run(self) -> None:
        if self.cfg.is_ssl or self.cfg.keepalive <= 0 or len(self.sockets) != 1:
            super().run()
            return
        listener = self.sockets[0]
        listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, None)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, "pipe")
        beat = min(1.0, (self.timeout or 2.0) / 2)
        try:
            while self.alive:
                self.notify()
                if not self.is_parent_alive():
                    return
                for key, _ in self.selector.select(beat):
                    if key.data == "pipe":
                        with contextlib.suppress(OSError):
                            os.read(self.PIPE[0], 1)
                    elif key.data is None:
                        self._accept_pending(listener)
                    else:
                        self._resume(key.data)
                    if not self.alive:
                        break
                self._expire_idle()
        finally:
            for kept in list(self.kept.values()):
                self._forget(kept)
                util.close_graceful(kept.sock.raw)
            self.selector.close()

    def accept(self, listener: socket.socket) -> None:
        """Stock `sync` (keep-alive off): one request per connection, with the deadline."""
        if self.cfg.is_ssl:  # TLS is terminated in front (docs/security.md); keep stock
            super().accept(listener)
            return
        client, addr = listener.accept()
        client.setblocking(True)
        util.close_on_exec(client)
        self.handle(listener, DeadlineSocket(client, self.request_timeout, self.notify), addr)

    def _accept_pending(self, listener: socket.socket) -> None:
        """Accept what is waiting (a few at a time, so kept connections take turns too)."""
        for _ in range(8):
            try:
                client, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EAGAIN):
                    continue
                raise
            client.setblocking(True)
            util.close_on_exec(client)
            self._serve(Kept(DeadlineSocket(client, self.request_timeout, self.notify), addr,
                             listener))
            if not self.alive:
                return

    def _resume(self, kept: Kept) -> None:
        self._forget(kept)
        kept.sock.next_request()
        self._serve(kept)

    def _forget(self, kept: Kept) -> None:
        if self.kept.pop(kept.sock.raw.fileno(), None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(kept.sock.raw)

    def _serve(self, kept: Kept) -> None:
        """Serve requests on this connection while the next one is already buffered; then
        keep it for the next request or close it."""
        keep = False
        req = None
        try:
            while True:
                if kept.parser is None:
                    kept.parser = http.get_parser(self.cfg, kept.sock, kept.addr)
                req = next(kept.parser)
                keep = self._handle_kept(kept, req) and bool(kept.parser.finish_body(
                    deadline=time.monotonic() + min(1.0, self.request_timeout)))
                if not keep or not self.alive or not _buffered(kept.parser):
                    break
                kept.sock.next_request()  # a pipelined request already read
        except http.errors.NoMoreData:
            keep = False
        except StopIteration:
            keep = False
        except OSError as exc:
            keep = False
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None):
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            keep = False
            self.handle_error(req, kept.sock, kept.addr, exc)
        if keep and self.alive:
            kept.idle_since = time.monotonic()
            self.kept[kept.sock.raw.fileno()] = kept
            self.selector.register(kept.sock.raw, selectors.EVENT_READ, kept)
        else:
            util.close_graceful(kept.sock.raw)

    def _expire_idle(self) -> None:
        limit = time.monotonic() - self.cfg.keepalive
        for kept in [k for k in self.kept.values() if k.idle_since < limit]:
            self._forget(kept)
            util.close_graceful(kept.sock.raw)

    def _handle_kept(self, kept: Kept, req: Any) -> bool:
        """`SyncWorker.handle_request` without its forced close: True when the response
        leaves the connection open (HTTP/1.1, a known length, the client did not say close)."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, kept.sock, kept.addr,
                                        kept.listener.getsockname(), self.cfg)
            if len(self.kept) >= self.cfg.worker_connections:
                resp.force_close()
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                for item in respiter:
                    resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")


def _buffered(parser: Any) -> bool:
    """Bytes of a next request already read from the socket (a pipelining client)."""
    buf = getattr(getattr(parser, "unreader", None), "buf", None)
    return buf is not None and buf.getbuffer().nbytes > 0
