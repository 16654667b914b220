"""Prometheus metrics, correct under several gunicorn workers.

`gateway serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory of its own
(`gateway.cli.serve`), so every worker writes its samples to memory-mapped files there and any
worker's `/metrics`
aggregates all of them (prometheus-client's multiprocess mode; gunicorn's `child_exit` hook
marks dead workers). Without that variable (tests, a single process) the metrics live in this
app's own registry. Policy gauges are read at scrape time from the worker's policy copy, which
every worker holds whole, so they need no aggregation; so are the input drift gauges, which
every worker computes from the database (`gateway.lifecycle.drift_monitor`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.traffic.policy import TrafficPolicy
from registry.records import OutcomeRow

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024, 4096)


def multiprocess_mode() -> bool:
    """True under `gateway serve`: samples go to files that every worker's `/metrics` adds up."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def batch_histogram(registry: CollectorRegistry | None) -> Histogram:
    """Requests merged into each onnxruntime run of a model with micro-batching on (1 when a
    request ran alone): what shows ops whether batching happens."""
    return Histogram("gateway_batch_requests", "Requests per onnxruntime run, for models with "
                     "micro-batching on", ["model"], buckets=BATCH_BUCKETS, registry=registry)

PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0, 30.0)


class PolicyCollector:
    def __init__(self, policies: Callable[[], dict[str, TrafficPolicy]]) -> None:
        self._policies = policies

    def collect(self) -> Iterator[GaugeMetricFamily]:
        revision = GaugeMetricFamily("gateway_policy_revision", "Live traffic policy revision",
                                     labels=["model"])
        weight = GaugeMetricFamily("gateway_policy_weight", "Traffic weight of a version",
                                   labels=["model", "version"])
        shadow = GaugeMetricFamily("gateway_policy_shadow_percent",
                                   "Percent of routed requests copied to a shadow version",
                                   labels=["model", "version"])
        for model, policy in sorted(self._policies().items()):
            revision.add_metric([model], policy.revision)
            for version, value in policy.weights:
                weight.add_metric([model, str(version)], value)
            for version, percent in policy.shadow:
                shadow.add_metric([model, str(version)], percent)
        yield revision
        yield weight
        yield shadow


DriftGauges = Callable[[], Iterable[tuple[str, int, float | None, int]]]


class DriftCollector:
    """Input drift per model/version, read at scrape time from this worker's drift monitor
    (every worker computes the same numbers from the database, so no aggregation is needed).
    `gateway_drift_psi` is absent for a version until it has enough sampled rows."""

    def __init__(self, gauges: DriftGauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        psi = GaugeMetricFamily("gateway_drift_psi", DRIFT_PSI_HELP, labels=["model", "version"])
        samples = GaugeMetricFamily("gateway_drift_samples", DRIFT_SAMPLES_HELP,
                                    labels=["model", "version"])
        for model, version, score, rows in self._gauges():
            samples.add_metric([model, str(version)], rows)
            if score is not None:
                psi.add_metric([model, str(version)], score)
        yield psi
        yield samples


DRIFT_PSI_HELP = ("Input drift of a version: the largest per-feature PSI of its sampled inputs "
                  "against its evaluation reference")
DRIFT_SAMPLES_HELP = "Sampled input rows the drift score of a version rests on"


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # In multiprocess mode samples go to files, not to a registry object.
        own = None if self.multiprocess else CollectorRegistry()
        self._own = own
        labels = ["model", "version"]
        self.requests = Counter("gateway_requests", "Requests served, by version and status",
                                ["model", "version", "kind", "status"], registry=own)
        self.errors = Counter("gateway_request_errors", "Requests that failed, by error code",
                              ["model", "version", "code"], registry=own)
        self.latency = Histogram("gateway_request_latency_seconds",
                                 "Time in the gateway per request", labels,
                                 buckets=LATENCY_BUCKETS, registry=own)
        self.model_latency = Histogram("gateway_model_latency_seconds",
                                       "onnxruntime run time per request", labels,
                                       buckets=LATENCY_BUCKETS, registry=own)
        self.shadow_runs = Counter("gateway_shadow_runs", "Shadow copies run", labels,
                                   registry=own)
        self.shadow_dropped = Counter("gateway_shadow_dropped",
                                      "Shadow copies dropped because the pool was full",
                                      ["model"], registry=own)
        self.queue_depth = Gauge("gateway_outcome_queue_depth",
                                 "Outcomes buffered in memory, not yet written",
                                 registry=own, multiprocess_mode="livesum")
        self.flush_lag = Gauge("gateway_outcome_flush_lag_seconds",
                               "Seconds since outcomes last reached the database",
                               registry=own, multiprocess_mode="livemax")
        self.spool_files = Gauge("gateway_outcome_spool_files",
                                 "Outcome batches spooled to disk awaiting the database",
                                 registry=own, multiprocess_mode="livemax")
        self.spool_failures = Counter("gateway_outcome_spool_failures",
                                      "Outcome batches that could not be spooled (disk full, "
                                      "unwritable); their rows stay in memory",
                                      registry=own)
        self.outcomes_dropped = Counter("gateway_outcomes_dropped",
                                        "Outcomes dropped, oldest first, because the in-memory "
                                        "buffer (GATEWAY_OUTCOME_BUFFER) was full",
                                        registry=own)
        self.feedback_labels = Counter("gateway_feedback_labels",
                                       "Label feedback, compared with the logged prediction",
                                       ["model", "version", "correct"], registry=own)
        self.load_failures = Counter("gateway_model_load_failures",
                                     "Versions that failed to load (corrupt or unloadable)",
                                     labels, registry=own)
        self.rollout_decisions = Counter(
            "gateway_rollout_decisions", "Rollout controller decisions that changed something "
            "(advance, complete, rollback, pause), by the process that took them",
            ["model", "action"], registry=own)
        # Observed by the runtime's batchers (`ModelRuntime(batch_sizes=...)`).
        self.batch_requests = batch_histogram(own)
        self.policy_propagation = Histogram(
            "gateway_policy_propagation_seconds",
            "From a traffic policy change being published to this worker routing by it",
            ["model"], buckets=PROPAGATION_BUCKETS, registry=own)
        self._policies: Callable[[], dict[str, TrafficPolicy]] = dict
        self._drift: DriftGauges | None = list
        self._drift_gauges: tuple[Gauge, Gauge] | None = None
        # labels() takes a lock and builds a key per call; a request's children are looked up
        # once per (model, version, kind, status) and reused
        self._children: dict[tuple[str, int, str, int], tuple[Any, ...]] = {}

    def policy_propagated(self, policy: TrafficPolicy) -> None:
        """Observe the delay from the change's publication to Redis (by the writer's clock:
        the same host, or NTP-synced hosts) to now, when this worker routes by it."""
        if policy.published_at is not None:
            delay = max(0.0, time.time() - float(policy.published_at))
            self.policy_propagation.labels(policy.model).observe(delay)

    def watch_policies(self, policies: Callable[[], dict[str, TrafficPolicy]]) -> None:
        self._policies = policies

    def watch_drift(self, gauges: DriftGauges) -> None:
        """Compute drift at scrape time in this process (no agent to do it)."""
        self._drift = gauges

    def drift_from_agent(self) -> None:
        """A serving worker beside an agent: the agent publishes drift (`publish_drift`), so
        a scrape answered here computes none."""
        self._drift = None

    def publish_drift(self, rows: list[tuple[str, int, float | None, int]]) -> None:
        """The agent's side: drift as multiprocess gauges that every worker's `/metrics`
        reads from the shared directory (gone with the agent's process, until it is back)."""
        if self._drift_gauges is None:
            labels = ["model", "version"]
            self._drift_gauges = (
                Gauge("gateway_drift_psi", DRIFT_PSI_HELP, labels, registry=self._own,
                      multiprocess_mode="livemostrecent"),
                Gauge("gateway_drift_samples", DRIFT_SAMPLES_HELP, labels, registry=self._own,
                      multiprocess_mode="livemostrecent"))
        psi, samples = self._drift_gauges
        for model, version, score, count in rows:
            samples.labels(model, str(version)).set(count)
            if score is not None:
                psi.labels(model, str(version)).set(score)

    def _outcome_children(self, model: str, version: int, kind: str, status: int
                          ) -> tuple[Any, ...]:
        key = (model, version, kind, status)
        children = self._children.get(key)
        if children is None:
            v = str(version)
            children = (self.requests.labels(model, v, kind, str(status)),
                        self.latency.labels(model, v), self.model_latency.labels(model, v),
                        self.shadow_runs.labels(model, v))
            if len(self._children) < 10_000:  # label sets are bounded by the registry anyway
                self._children[key] = children
        return children

    def outcome(self, row: OutcomeRow) -> None:
        requests, latency, model_latency, shadow_runs = self._outcome_children(
            row["model"], row["version"], row["kind"], row["status"])
        requests.inc()
        if row["status"] >= 400:
            self.errors.labels(row["model"], str(row["version"]),
                               row["error_code"] or "error").inc()
        if row["kind"] == "shadow":
            shadow_runs.inc()
            return
        latency.observe(row["latency_ms"] / 1000)
        model_ms = row["model_ms"]
        if model_ms is not None:
            model_latency.observe(model_ms / 1000)

    def render(self) -> tuple[bytes, str]:
        registry = CollectorRegistry()
        if self.multiprocess:
            MultiProcessCollector(registry)
        else:
            assert self._own is not None
            registry = self._own
        policy_registry = CollectorRegistry()
        policy_registry.register(PolicyCollector(self._policies))
        if self._drift is not None:
            policy_registry.register(DriftCollector(self._drift))
        return generate_latest(registry) + generate_latest(policy_registry), CONTENT_TYPE_LATEST
