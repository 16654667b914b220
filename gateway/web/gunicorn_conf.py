"""gunicorn settings: used by `gateway serve` (`-c python:gateway.web.gunicorn_conf`).

- Worker class `sync` by default, chosen by measurement (docs/performance.md): inference is
  CPU-bound and short, so one process per core with one request at a time did best at every
  concurrency measured; gthread's hand-offs between its poller and pool threads cost 0.2 ms a
  request. The price: a slow client holds a whole worker, so run it behind a buffering proxy
  (nginx in docker-compose.yml). `GATEWAY_WORKER_CLASS=gthread` (or `gateway serve
  --worker-class gthread --threads 16`) is for models with micro-batching, which can only merge
  requests that are in one worker at the same time.
- No `preload_app`: each worker builds its app after fork, so database pools, onnxruntime
  sessions, Redis connections and background threads are never shared across a fork. The cost
  is that each worker loads its own sessions (they are per-process anyway).
- `worker_exit` stops each worker's background threads and drops its onnxruntime sessions
  before the interpreter shuts down (onnxruntime aborts if torn down under a live thread).
- Connections are kept alive between requests (`GATEWAY_KEEPALIVE_SECONDS`, 5 s): the sync
  worker waits on its listener and its idle connections with `selectors` and serves each
  request on its one thread (`gateway/web/workers.py`), which saved 14% a request at 8
  connections against closing each one (docs/performance.md).
- Receiving a request is bounded by `GATEWAY_REQUEST_TIMEOUT` (20 s; `gateway/web/workers.py`):
  headers and body must arrive within it, or the client gets `408` and the worker moves on.
- `timeout` bounds a stuck worker; `graceful_timeout` lets SIGTERM finish in-flight requests and
  flush buffered outcomes before the worker exits.
"""

import os

from gateway.settings import Settings

_settings = Settings.from_env()  # `gateway serve` passes --bind/--workers on gunicorn's argv
bind = _settings.bind
workers = _settings.workers
# `sync` is gunicorn's sync worker plus a deadline on receiving each request
# (GATEWAY_REQUEST_TIMEOUT), so a slow client frees its worker instead of getting it killed
worker_class = ("gateway.web.workers.DeadlineSyncWorker" if _settings.worker_class == "sync"
                else _settings.worker_class)
# gunicorn turns `sync` with threads > 1 into gthread; keep `sync` what it says
threads = 1 if _settings.worker_class == "sync" else _settings.threads
timeout = _settings.worker_timeout
graceful_timeout = 20
keepalive = _settings.keepalive_seconds
preload_app = False
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = _settings.access_log
errorlog = "-"
loglevel = _settings.log_level
wsgi_app = "gateway.web.app:create_app()"
# gunicorn >= 24 opens a control socket at one fixed path per user; several gateways on one
# host (tests, blue/green) would fight over it, and we do not use it.
control_socket_disable = True


def post_worker_init(worker: object) -> None:
    from gateway.web.workers import install_json_errors

    install_json_errors()  # gunicorn's own 400/414/431 answers in JSON, not HTML
    app = getattr(getattr(worker, "wsgi", None), "extensions", None)
    if app is not None and "mgw" in app:
        app["mgw"].start()


def child_exit(server: object, worker: object) -> None:
    """In the master: drop a dead worker's live gauges from the multiprocess metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def worker_exit(server: object, worker: object) -> None:
    """Flush and close this worker's services, then leave without the interpreter's teardown
    when the worker had booted: everything it owes is written by then, and finalising
    onnxruntime, numpy and SQLAlchemy took 0.7 s a worker on a slow machine (a stopping
    gateway waits for that). A worker that failed to boot exits as gunicorn decides, so the
    master still sees its boot error."""
    app = getattr(getattr(worker, "wsgi", None), "extensions", None)
    if app is not None and "mgw" in app:
        app["mgw"].close()
        if getattr(worker, "booted", False):
            import logging
            import sys

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
