"""What every `gateway` command shares: its context (settings and the composition root's
services), the one-line error, the actor named in the audit trail, and output for people
(tables) or scripts (`--json`)."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.services import Services, build_services

if TYPE_CHECKING:
    from gateway.cli.backends import Backend
from gateway.settings import Settings
from registry.db import Database
from registry.store import Store


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2."""


class CommandExit(Exception):
    """A command's own exit status (`gateway deliver`: 3 gate, 4 rolled back, 5 timeout)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


Command = Callable[["Context", argparse.Namespace], None]


def over_http(command: Command) -> Command:
    """Marks a command that runs against a gateway with `--url`/`--token` as well."""
    command.over_http = True  # type: ignore[attr-defined]
    return command


def local_only(command: Command) -> Command:
    """Marks a command that always runs on this host (serve, demo, schema, tokens)."""
    command.local_only = True  # type: ignore[attr-defined]
    return command


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def emit(args: argparse.Namespace, data: Any, table: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(table(data) + "\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


class Context:
    """Settings, then the services of the composition root, built on first use so that
    `--help` and `db upgrade` need no database."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        """`url`: a running gateway to drive over HTTP instead of this host's database."""
        self.settings = Settings.from_env()
        self._services: Services | None = None
        self.url = url
        self.token = token
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        """Where the command's work happens (`gateway.cli.backends`)."""
        if self._backend is None:
            from gateway.cli.backends import LocalBackend, RemoteBackend

            if self.url:
                from gateway.cli.http_client import GatewayClient

                self._backend = RemoteBackend(GatewayClient(self.url, self.token))
            else:
                self._backend = LocalBackend(self, actor())
        return self._backend

    @staticmethod
    def note(text: str) -> None:
        print(f"note: {text}", file=sys.stderr)

    @property
    def services(self) -> Services:
        if self._services is None:
            from registry.migrate import current_revision, head_revision

            probe = Database(self.settings.database_url)
            try:
                current = current_revision(probe.engine)
            finally:
                probe.dispose()
            if current != head_revision():
                raise CliError(
                    f"the database schema is at {current or 'nothing'}, this gateway needs "
                    f"{head_revision()}: run `gateway db upgrade`"
                )
            self._services = build_services(self.settings, background=False)
        return self._services

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def store(self) -> Store:
        return self.services.store

    def announce(self, model: str) -> None:
        """Tell running gateways of a registry change and wait until each worker has it, so
        the next request to any of them sees it (`gateway.serving.registry_sync`)."""
        self.services.announcer.announce(model)

    def close(self) -> None:
        """Release connections and sessions: `main` also runs in-process (tests, scripts),
        where a leaked PostgreSQL connection outlives the command."""
        if self._services is not None:
            self._services.close()
            self._services = None
        client = getattr(self._backend, "client", None)
        if client is not None:
            client.close()
