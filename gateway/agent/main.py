"""The agent process: writes the outcome rows the workers send, runs their shadow copies, and
drives rollouts.

One per `gateway serve` (started, restarted and stopped by it, `gateway.cli.serve`). It binds
the channel's socket (`gateway.agent.channel`), puts every row it receives into an `OutcomeLog`
(batched inserts, a spool while the database is down, exactly as a worker's own log would),
runs each shadow copy in its pool at nice 19 and logs its row, computes input drift every
`drift_refresh_seconds` for every worker's `/metrics`, and runs the rollout controller, so the
host looks at rollouts once rather than once per worker. Its log
counts into the same Prometheus metrics as the workers' (multiprocess mode), so `/metrics` shows
its queue, lag and spool. On SIGTERM it reads what is still queued on the socket, writes it, and
exits.

Loss bound: a SIGKILL of the agent loses the rows it holds (at most one flush interval's worth
plus the socket's queue) and the shadow copies queued in it; rows sent while it is down are
refused and kept by the workers, shadow copies sent then are dropped and counted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from gateway.agent.channel import MAX_DATAGRAM, SHADOW_TAG, decode_rows, decode_shadow
from gateway.outcomes.log import OutcomeLog
from gateway.services import Services, build_services
from gateway.serving.dataplane import run_shadow
from gateway.serving.shadow import ShadowCopy
from gateway.settings import Settings

log = logging.getLogger("gateway.agent")

RECEIVE_BUFFER = 8 * 1024 * 1024  # asked for; the kernel caps it at net.core.rmem_max


def bind(path: Path) -> socket.socket:
    if path.exists():
        path.unlink()  # a previous agent's, gone: the serve process owns this path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    return sock


def run(settings: Settings, socket_file: Path) -> None:
    settings = settings.with_(agent_socket=None)  # the agent writes; it forwards to nobody
    services = build_services(settings, background=False)
    outcomes = OutcomeLog(services.db, settings.state_dir / "spool",
                          settings.outcome_flush_seconds, max_buffer=settings.outcome_buffer,
                          metrics=services.metrics)
    outcomes.start()
    sock = bind(socket_file)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is gateway serve's
    services.controller.ensure_started()
    done = threading.Event()
    drift = threading.Thread(target=publish_drift, args=(services, done), name="drift",
                             daemon=True)
    drift.start()
    sock.settimeout(0.2)
    take = Receiver(services, outcomes)
    try:
        while not stopping:
            with contextlib.suppress(TimeoutError):  # wakes to notice SIGTERM
                take(sock.recv(MAX_DATAGRAM))
        sock.setblocking(False)
        while True:  # what the workers sent before they stopped
            try:
                take(sock.recv(MAX_DATAGRAM))
            except BlockingIOError:
                break
    finally:
        sock.close()
        socket_file.unlink(missing_ok=True)
        done.set()
        services.controller.stop()
        services.shadows.stop()  # copies still queued are dropped: they are only shadows
        outcomes.close()
        services.close()


def publish_drift(services: Services, done: threading.Event) -> None:
    """Drift scores for `/metrics`, computed here every `drift_refresh_seconds` (at least 1 s)
    instead of in the serving worker that answers a scrape."""
    every = max(1.0, services.settings.drift_refresh_seconds)
    while True:
        try:
            services.metrics.publish_drift(services.drift.gauges())
        except Exception:  # the next round tries again; gauges() logs database errors
            log.exception("drift publication failed")
        if done.wait(every):
            return


class Receiver:
    """Dispatches one datagram: a batch of outcome rows to the log, a shadow copy to the pool."""

    def __init__(self, services: Services, outcomes: OutcomeLog) -> None:
        self.services = services
        self.outcomes = outcomes

    def __call__(self, data: bytes) -> None:
        try:
            if data.startswith(SHADOW_TAG):
                self._shadow(decode_shadow(data))
            else:
                for row in decode_rows(data):
                    self.outcomes.record(row)
        except (ValueError, KeyError, TypeError) as exc:  # never from our workers; keep going
            log.warning("ignoring a malformed datagram: %s", exc)

    def _shadow(self, copy: ShadowCopy) -> None:
        services = self.services

        def run() -> None:
            try:
                version, _ = services.catalog.version(copy.model, copy.version)
            except Exception as exc:  # archived or removed since: logged as a failed copy
                log.warning("shadow copy of %s v%s skipped: %s", copy.model, copy.version, exc)
                return
            row = run_shadow(services.runtime, version, copy)
            self.outcomes.record(row)
            services.metrics.outcome(row)

        if not services.shadows.submit(run):
            services.metrics.shadow_dropped.labels(copy.model).inc()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.agent.main")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [agent] %(message)s")
    run(Settings.from_env(), Path(args.socket))
    # everything is written and closed: skip the interpreter's teardown of onnxruntime and
    # friends (most of a stopping agent's time), which `gateway serve` waits for
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
