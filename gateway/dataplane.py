"""The one inference path behind `/predict` and `/v2/.../infer`: resolve, decode, run.

Routes translate wire formats and call `DataPlane.infer`; none of them knows about versions,
weights or sessions. Decoding happens after the version is chosen, because the chosen
version's signature is what the input is checked against.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.catalog import Catalog, Snapshot, VersionInfo
from gateway.runtime import ModelRuntime
from registry.errors import GatewayError, InvalidInput, Unavailable

REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# (inputs, names of the outputs to compute or None for all)
Decoder = Callable[[VersionInfo], tuple[dict[str, np.ndarray], list[str] | None]]


def request_id_from(header: str | None) -> str:
    """The caller's id when it is well-formed, a fresh one when absent; anything else is 400."""
    if header is None:
        return uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(header):
        raise InvalidInput("X-Request-Id must match [A-Za-z0-9_.:-]{1,128}")
    return header


@dataclass
class InferenceResult:
    request_id: str
    model: str
    version: int
    reason: str
    outputs: dict[str, np.ndarray]
    model_ms: float
    total_ms: float


class DataPlane:
    def __init__(self, catalog: Catalog, runtime: ModelRuntime) -> None:
        self.catalog = catalog
        self.runtime = runtime
        catalog.on_reload(self._warm)

    def _warm(self, snapshot: Snapshot) -> None:
        """Load what unpinned traffic will hit before it arrives, off the request path."""
        for entry in snapshot.models.values():
            latest = entry.latest_live
            if latest is not None and not self.runtime.is_loaded(latest.sha256):
                # a failure is recorded by the runtime as broken; requests will say why
                with contextlib.suppress(GatewayError):
                    self.runtime.get(latest)

    def choose(self, model: str, version_ref: str | None) -> tuple[VersionInfo, str]:
        """A pinned version or alias when asked for; otherwise the newest live version."""
        if version_ref is not None:
            return self.catalog.version(model, version_ref.strip())
        entry = self.catalog.model(model)
        latest = entry.latest_live
        if latest is None:
            raise Unavailable(f"model {model!r} has no version that can serve (all archived)")
        return latest, "default"

    def infer(self, model: str, version_ref: str | None, decode: Decoder,
              request_id: str) -> InferenceResult:
        started = time.perf_counter()
        version, reason = self.choose(model, version_ref)
        inputs, wanted = decode(version)
        loaded = self.runtime.get(version)
        run_started = time.perf_counter()
        try:
            outputs = loaded.run(inputs, wanted)
        except Exception as exc:  # onnxruntime rejects values the signature allowed
            message = str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__
            raise InvalidInput(f"the model could not run on this input: {message}") from None
        finished = time.perf_counter()
        return InferenceResult(
            request_id=request_id,
            model=model,
            version=version.version,
            reason=reason,
            outputs=outputs,
            model_ms=(finished - run_started) * 1000,
            total_ms=(finished - started) * 1000,
        )
