"""The one inference path behind `/predict` and `/v2/.../infer`: route, decode, run, shadow.

Routes translate wire formats and call `DataPlane.infer`; none of them knows about weights,
sessions or shadows. Decoding happens after the version is chosen, because the chosen
version's signature is what the input is checked against. Shadow copies are handed back as
deferred work that the HTTP layer starts once the response has been sent.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gateway.outcomes.log import OutcomeLog, input_fingerprint, now
from gateway.prometheus_metrics import Metrics
from gateway.serving.catalog import Catalog, Snapshot, VersionInfo
from gateway.serving.request_ids import FreshIds, RequestIds
from gateway.serving.runtime import ModelRuntime
from gateway.serving.shadow import ShadowCopy, ShadowPool
from gateway.traffic.policy import choose_version, shadow_draws
from gateway.traffic.sync import PolicyCache
from registry.errors import Conflict, GatewayError, InvalidInput, Unavailable
from registry.records import Kind, OutcomeRow, Reason

REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# (inputs, names of the outputs to compute or None for all)
Decoder = Callable[[VersionInfo], tuple[dict[str, np.ndarray], list[str] | None]]


def request_id_from(header: str | None, fresh: Callable[[], str]) -> str:
    """The caller's id when it is well-formed, a fresh one when absent; anything else is 400."""
    if header is None:
        return fresh()
    if not REQUEST_ID.fullmatch(header):
        raise InvalidInput("X-Request-Id must match [A-Za-z0-9_.:-]{1,128}")
    return header


@dataclass(frozen=True)
class Choice:
    version: VersionInfo
    reason: Reason
    revision: int | None
    shadows: tuple[VersionInfo, ...] = ()


@dataclass
class InferenceResult:
    request_id: str
    model: str
    version: int
    reason: Reason
    revision: int | None
    outputs: dict[str, np.ndarray]
    model_ms: float
    total_ms: float
    deferred: list[Callable[[], None]] = field(default_factory=list)

    def run_deferred(self) -> None:
        """Start work that must not delay the caller (call once the response is out)."""
        for job in self.deferred:
            job()
        self.deferred.clear()


class DataPlane:
    def __init__(self, catalog: Catalog, runtime: ModelRuntime, policies: PolicyCache,
                 shadows: ShadowPool, outcomes: OutcomeLog, ids: RequestIds,
                 metrics: Metrics, input_sample_rate: float = 0.0,
                 forward_shadow: Callable[[ShadowCopy], bool | None] | None = None) -> None:
        """`forward_shadow`: hands a copy to the agent; True sent, False dropped (channel
        full or agent down), None not sendable (run it in this worker's pool)."""
        self.forward_shadow = forward_shadow
        self.metrics = metrics
        self.input_sample_rate = input_sample_rate
        self._draw = random.Random().random  # sampling for drift, not for security
        self.catalog = catalog
        self.runtime = runtime
        self.policies = policies
        self.shadows = shadows
        self.outcomes = outcomes
        self.ids = ids
        self.fresh_ids = FreshIds()
        catalog.on_reload(self._warm)

    def _warm(self, snapshot: Snapshot) -> None:
        """Load what traffic will hit before it arrives, off the request path."""
        for entry in snapshot.models.values():
            wanted = {entry.latest_live} if entry.latest_live else set()
            policy = self.policies.get(entry.name)
            if policy is not None:
                wanted |= {entry.versions[v] for v in policy.versions() if v in entry.versions}
            for version in wanted:
                if version is not None and not self.runtime.is_loaded(version.sha256):
                    # a failure is recorded by the runtime as broken; requests will say why
                    with contextlib.suppress(GatewayError):
                        self.runtime.get(version)

    def choose(self, model: str, version_ref: str | None, routing_key: str | None = None
               ) -> Choice:
        """Pinned version or alias; else the traffic policy; else the newest live version."""
        policy = self.policies.get(model)
        revision = policy.revision if policy is not None else None
        if version_ref is not None:
            version, pinned = self.catalog.version(model, version_ref.strip())
            return Choice(version, pinned, revision)
        if policy is not None and policy.live:
            number, routed = choose_version(policy, routing_key)
            version, _ = self.catalog.version(model, number)
            shadows = tuple(self.catalog.version(model, v)[0] for v in shadow_draws(policy))
            return Choice(version, routed, revision, shadows)
        latest = self.catalog.model(model).latest_live
        if latest is None:
            raise Unavailable(f"model {model!r} has no version that can serve (all archived)")
        return Choice(latest, "default", revision)

    def infer(self, model: str, version_ref: str | None, decode: Decoder, request_id: str,
              routing_key: str | None = None, caller_id: bool = False,
              caller: str | None = None) -> InferenceResult:
        """`caller_id`: the request id came from the caller (so it must be new); `caller`:
        the key id of the token that sent it, logged so that only it may label the request."""
        started = time.perf_counter()
        choice = self.choose(model, version_ref, routing_key)
        if caller_id and not self.ids.claim(model, request_id):
            raise Conflict(f"request id {request_id!r} was already used for model {model!r}")
        try:
            inputs, wanted = decode(choice.version)
            loaded = self.runtime.get(choice.version)
            run_started = time.perf_counter()
            try:
                outputs = loaded.run(inputs, wanted)
            except Exception as exc:  # onnxruntime rejects values the signature allowed
                message = str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__
                raise InvalidInput(f"the model could not run on this input: {message}"
                                   ) from None
        except GatewayError as exc:
            self._record(outcome_row(model, request_id, choice.version.version, "primary",
                                   choice.reason, choice.revision, started,
                                   status=exc.status, error_code=exc.code, caller=caller))
            raise
        finished = time.perf_counter()
        result = InferenceResult(
            request_id=request_id, model=model, version=choice.version.version,
            reason=choice.reason, revision=choice.revision, outputs=outputs,
            model_ms=(finished - run_started) * 1000, total_ms=(finished - started) * 1000,
        )
        fingerprint = input_fingerprint(inputs)
        self._record(outcome_row(
            model, request_id, result.version, "primary", choice.reason, choice.revision, started,
            model_ms=result.model_ms, outputs=outputs, fingerprint=fingerprint,
            inputs=self._sample(choice.version, inputs), caller=caller))
        for shadow in choice.shadows:
            result.deferred.append(
                self._shadow_job(shadow, inputs, request_id, choice.revision, fingerprint))
        return result

    def _sample(self, version: VersionInfo, inputs: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, ...] | None:
        """The inputs to keep for drift, in signature order, for a sampled share of requests.

        An unsampled request costs one random draw; a sampled one a tuple of references. The
        flusher turns them into rows (`gateway.lifecycle.drift.logged_rows`), off this thread.
        """
        if self.input_sample_rate <= 0.0 or self._draw() >= self.input_sample_rate:
            return None
        return tuple(inputs[spec.name] for spec in version.inputs if spec.name in inputs)

    def _record(self, row: OutcomeRow) -> None:
        self.outcomes.record(row)
        self.metrics.outcome(row)

    def _shadow_job(self, version: VersionInfo, inputs: dict[str, np.ndarray],
                    request_id: str, revision: int | None, fingerprint: str
                    ) -> Callable[[], None]:
        copy = ShadowCopy(version.model, version.version, request_id, revision, fingerprint,
                          inputs)

        def run() -> None:
            self._record(run_shadow(self.runtime, version, copy))

        def submit() -> None:
            sent = self.forward_shadow(copy) if self.forward_shadow is not None else None
            if sent is None:  # no agent, or a copy too large for its channel: run it here
                sent = self.shadows.submit(run)
            if not sent:
                self.metrics.shadow_dropped.labels(version.model).inc()

        return submit


def outcome_row(model: str, request_id: str, version: int, kind: Kind, reason: Reason,
                revision: int | None, started: float, status: int = 200,
                error_code: str | None = None, model_ms: float | None = None,
                outputs: dict[str, np.ndarray] | None = None, fingerprint: str | None = None,
                inputs: tuple[np.ndarray, ...] | None = None, caller: str | None = None
                ) -> OutcomeRow:
    return {
        "request_id": request_id, "model": model,
        "version": version, "kind": kind, "reason": reason, "revision": revision,
        "ts": now(), "latency_ms": (time.perf_counter() - started) * 1000,
        "model_ms": model_ms, "status": status, "error_code": error_code,
        "outputs": outputs, "input_sha256": fingerprint, "inputs": inputs,
        "caller": caller,
    }


def run_shadow(runtime: ModelRuntime, version: VersionInfo, copy: ShadowCopy) -> OutcomeRow:
    """Run one shadow copy and return its outcome row: the same in a worker's pool and in
    the agent's. A failure is a row too (status 500), so a broken shadow shows in analytics."""
    started = time.perf_counter()
    try:
        loaded = runtime.get(version)
        run_started = time.perf_counter()
        outputs = loaded.run(copy.inputs, None)
    except Exception as exc:
        code = exc.code if isinstance(exc, GatewayError) else "model_error"
        return outcome_row(copy.model, copy.request_id, copy.version, "shadow", "shadow",
                           copy.revision, started, status=500, error_code=code)
    model_ms = (time.perf_counter() - run_started) * 1000
    return outcome_row(copy.model, copy.request_id, copy.version, "shadow", "shadow",
                       copy.revision, started, model_ms=model_ms, outputs=outputs,
                       fingerprint=copy.fingerprint)
