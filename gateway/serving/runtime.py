"""onnxruntime sessions by artifact sha256: loaded once per worker, warmed, kept in an LRU.

Sessions are keyed by content, so two versions (or two models) with the same bytes share one
session, and a session can never serve bytes other than those registered. Loading reads the
artifact through the store, which verifies its sha256: a corrupted file is refused, remembered
as broken (for `/readyz` and metrics) and re-checked only after a back-off.

A model with micro-batching settings gets its session wrapped in a `Batcher` (one per model and
session, rebuilt when the settings change), so `LoadedModel.run` merges concurrent requests
without its callers knowing. A session whose signature or probe refuses merging keeps running
requests one by one, whatever the settings say.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from prometheus_client import CollectorRegistry, Histogram

from gateway.prometheus_metrics import batch_histogram, multiprocess_mode
from gateway.serving.batching import Batcher, merge_refusal, run_alone
from gateway.serving.catalog import VersionInfo
from registry.errors import Unavailable
from registry.inspect_onnx import refuse_external_data, session_options
from registry.store import Store

log = logging.getLogger(__name__)

BROKEN_RETRY_S = 30.0


@dataclass
class LoadedModel:
    sha256: str
    size_bytes: int
    session: ort.InferenceSession
    batcher: Batcher | None = None
    # every output, looked up once: get_outputs() builds new NodeArg objects on each call
    output_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.output_names:
            self.output_names = [o.name for o in self.session.get_outputs()]

    def run(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        if self.batcher is not None:
            return self.batcher.run(inputs, outputs)
        return run_alone(self.session, inputs, outputs or self.output_names)


def warmup_inputs(version: VersionInfo) -> dict[str, np.ndarray]:
    """Zeros with every dynamic dimension set to 1: enough to make onnxruntime allocate."""
    return {
        spec.name: np.zeros([d if d > 0 else 1 for d in spec.shape], dtype=spec.dtype)
        for spec in version.inputs
    }


class ModelRuntime:
    """Bounded cache of warmed sessions, safe for the worker's threads."""

    def __init__(self, store: Store, max_count: int, max_bytes: int,
                 intra_op_threads: int,
                 on_failure: Callable[[VersionInfo], None] | None = None,
                 batch_sizes: Histogram | None = None) -> None:
        self._on_failure = on_failure
        # Requests per merged run, by model. Under gunicorn (multiprocess mode) samples go to the
        # shared files whoever holds the histogram; otherwise they stay in a registry of ours.
        self.batch_sizes = batch_sizes or batch_histogram(
            None if multiprocess_mode() else CollectorRegistry())
        self._store = store
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._threads = intra_op_threads
        self._sessions: OrderedDict[str, LoadedModel] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self.broken: dict[str, tuple[float, str]] = {}
        self._batched: dict[tuple[str, str], LoadedModel] = {}  # (sha256, model) -> batching
        self.merge_refusals: dict[str, str] = {}  # sha256 -> why it cannot batch ("" if it can)

    def get(self, version: VersionInfo) -> LoadedModel:
        loaded = self._sessions.get(version.sha256)
        if loaded is not None:
            with self._lock:
                if version.sha256 in self._sessions:
                    self._sessions.move_to_end(version.sha256)
        else:
            loaded = self._load(version)
        if version.batching is None:
            return loaded
        return self._with_batching(version, loaded)

    def _with_batching(self, version: VersionInfo, loaded: LoadedModel) -> LoadedModel:
        """This model's batcher on the session, made on first use and again when the settings
        change; the plain session when merging is refused."""
        key = (version.sha256, version.model)

        def current() -> LoadedModel | None:
            view = self._batched.get(key)
            if view is None or view.session is not loaded.session or view.batcher is None \
                    or view.batcher.settings != version.batching:
                return None
            return view

        view = current()
        if view is not None:
            return view
        if self.merge_refusals.get(version.sha256):
            return loaded
        with self._lock:
            load_lock = self._load_locks.setdefault(version.sha256, threading.Lock())
        with load_lock:
            view = current()
            if view is not None:
                return view
            if version.sha256 not in self.merge_refusals:
                refusal = merge_refusal(loaded.session, version.inputs, version.outputs)
                self.merge_refusals[version.sha256] = refusal or ""
                if refusal is not None:
                    log.warning("%s version %s will not be micro-batched: %s", version.model,
                                version.version, refusal)
            if self.merge_refusals.get(version.sha256) or version.batching is None:
                return loaded
            sizes = self.batch_sizes.labels(version.model)
            view = LoadedModel(loaded.sha256, loaded.size_bytes, loaded.session,
                               Batcher(loaded.session, version.batching, sizes.observe))
            with self._lock:
                if version.sha256 in self._sessions:  # not evicted meanwhile
                    self._batched[key] = view
            return view

    def is_loaded(self, sha256: str) -> bool:
        return sha256 in self._sessions

    def _load(self, version: VersionInfo) -> LoadedModel:
        with self._lock:
            load_lock = self._load_locks.setdefault(version.sha256, threading.Lock())
        with load_lock:  # one loader per artifact; others wait for its result
            loaded = self._sessions.get(version.sha256)
            if loaded is not None:
                return loaded
            failure = self.broken.get(version.sha256)
            if failure is not None and time.monotonic() - failure[0] < BROKEN_RETRY_S:
                raise Unavailable(f"{version.model} version {version.version} cannot be loaded: "
                                  f"{failure[1]}")
            try:
                # a verified plaintext file (decrypted in memory when sealed): onnxruntime
                # reads it itself, so the model's bytes are never held twice here
                with self._store.load_path(version.sha256) as path:
                    # versions registered before the check existed are held to it too
                    refuse_external_data(onnx.load(str(path), load_external_data=False))
                    session = ort.InferenceSession(
                        str(path), sess_options=session_options(self._threads),
                        providers=["CPUExecutionProvider"],
                    )
                    size = path.stat().st_size
                loaded = LoadedModel(version.sha256, size, session)
                loaded.run(warmup_inputs(version), None)
            except Exception as exc:  # a bad artifact, onnxruntime refusing it, a failed warm-up
                reason = str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__
                self.broken[version.sha256] = (time.monotonic(), reason)
                if self._on_failure is not None:
                    self._on_failure(version)
                log.error("cannot load %s version %s (%s): %s", version.model, version.version,
                          version.sha256, reason)
                raise Unavailable(
                    f"{version.model} version {version.version} cannot be loaded: {reason}"
                ) from None
            self.broken.pop(version.sha256, None)
            with self._lock:
                self._sessions[version.sha256] = loaded
                self._bytes += loaded.size_bytes
                self._evict(keep=version.sha256)
            return loaded

    def _evict(self, keep: str) -> None:
        while len(self._sessions) > 1 and (
            len(self._sessions) > self._max_count or self._bytes > self._max_bytes
        ):
            sha, victim = next(iter(self._sessions.items()))
            if sha == keep:
                self._sessions.move_to_end(sha)
                continue
            del self._sessions[sha]
            self._bytes -= victim.size_bytes
            self.merge_refusals.pop(sha, None)
            for key in [k for k in self._batched if k[0] == sha]:
                del self._batched[key]

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._batched.clear()
            self.merge_refusals.clear()
            self._bytes = 0

    @property
    def cached(self) -> list[str]:
        return list(self._sessions)
