"""The remote CLI's HTTP client: a running gateway's JSON routes, with a bearer token.

`requests` with a connect timeout, a read timeout long enough for an evaluation in the
request, and retries (with backoff) of idempotent calls only (GET, PUT, DELETE) on connection
failures and 502/503/504: a POST that registers a version or starts a rollout is never sent
twice. An error answer becomes the `RemoteError` of its contract code and message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from registry.errors import GatewayError


class RemoteError(GatewayError):
    """An error the gateway answered: its code and message, as the local form raises them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 300.0  # an evaluation runs inside its request
RETRIES = Retry(total=3, connect=3, read=2, status=3, backoff_factor=0.3,
                status_forcelist=(502, 503, 504),
                allowed_methods=frozenset({"GET", "PUT", "DELETE"}), raise_on_status=False)


class GatewayClient:
    def __init__(self, url: str, token: str | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise RemoteError(400, "invalid_input",
                              f"--url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=RETRIES)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/json"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path,
                                            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                                            **kwargs)
        except requests.RequestException as exc:
            raise RemoteError(503, "unavailable",
                              f"cannot reach the gateway at {self.url}: "
                              f"{exc.__class__.__name__}") from None
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                raise RemoteError(response.status_code, str(error.get("code", "error")),
                                  str(error.get("message", "")))
            raise RemoteError(response.status_code, "error",
                              f"the gateway answered {response.status_code} "
                              f"{response.reason}")
        return body

    def stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """A GET whose body is not JSON (an export), read in chunks as it arrives."""
        try:
            response = self.session.get(self.url + path, params=params, stream=True,
                                        timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except requests.RequestException as exc:
            raise RemoteError(503, "unavailable",
                              f"cannot reach the gateway at {self.url}: "
                              f"{exc.__class__.__name__}") from None
        if response.status_code >= 400:
            try:
                error = orjson.loads(response.content).get("error", {})
            except (orjson.JSONDecodeError, AttributeError):
                error = {}
            raise RemoteError(response.status_code, str(error.get("code", "error")),
                              str(error.get("message", f"the gateway answered "
                                                       f"{response.status_code}")))
        return response.iter_content(chunk_size=64 * 1024)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()
