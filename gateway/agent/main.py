"""The agent process: writes the outcome rows the workers send, and drives rollouts.

One per `gateway serve` (started, restarted and stopped by it, `gateway.cli.serve`). It binds
the channel's socket (`gateway.agent.channel`), puts every row it receives into an `OutcomeLog`
(batched inserts, a spool while the database is down, exactly as a worker's own log would), and
runs the rollout controller, so the host looks at rollouts once rather than once per worker. Its log
counts into the same Prometheus metrics as the workers' (multiprocess mode), so `/metrics` shows
its queue, lag and spool. On SIGTERM it reads what is still queued on the socket, writes it, and
exits.

Loss bound: a SIGKILL of the agent loses the rows it holds (at most one flush interval's worth
plus the socket's queue); rows sent while it is down are refused and kept by the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from gateway.agent.channel import MAX_DATAGRAM, decode_rows
from gateway.outcomes.log import OutcomeLog
from gateway.services import build_services
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
    sock.settimeout(0.2)
    try:
        while not stopping:
            with contextlib.suppress(TimeoutError):  # wakes to notice SIGTERM
                _take(outcomes, sock.recv(MAX_DATAGRAM))
        sock.setblocking(False)
        while True:  # what the workers sent before they stopped
            try:
                _take(outcomes, sock.recv(MAX_DATAGRAM))
            except BlockingIOError:
                break
    finally:
        sock.close()
        socket_file.unlink(missing_ok=True)
        services.controller.stop()
        outcomes.close()
        services.close()


def _take(outcomes: OutcomeLog, data: bytes) -> None:
    try:
        for row in decode_rows(data):
            outcomes.record(row)
    except (ValueError, KeyError, TypeError) as exc:  # never from our workers; keep going
        log.warning("ignoring a malformed outcome datagram: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.agent.main")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [agent] %(message)s")
    run(Settings.from_env(), Path(args.socket))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
