"""Progressive rollout: move traffic to a candidate step by step, on its logged outcomes.

At each look the controller reads, from the outcome log, the candidate's and the baseline's
outcomes since the rollout started, and decides one of:

- **rollback** when the candidate is worse than the baseline by more than `max_regression`
  with confidence 1 - alpha, when its error rate is above `max_error_rate` with the same
  confidence, or when its p99 latency is above `max_p99_ms` (a plain threshold, checked once
  it has 100 answered requests). The previous policy comes back at once.
- **wait** while the candidate has fewer than `min_samples` labelled (or rewarded) outcomes
  at the current step.
- **advance** to the next step's weight otherwise, and **complete** after the last step: the
  candidate keeps 100% and the `champion` alias moves to it.

The metric and error-rate tests use always-valid confidence sequences (gateway.lifecycle.
sequential), so looking every few seconds does not inflate the false rollback rate: for a
candidate no worse than the tolerated regression, the chance that any look ever rolls it back
is at most alpha. Advancing is deliberately the canary rule (enough samples and no evidence of
harm), not a proof of superiority, which would take thousands of samples per step.

Only one process acts on a model at a time: each look holds a Redis lock with an expiry, and
every write is a compare-and-set on the rollout row and an `If-Match` on the traffic policy,
so a look that raced with ops (pause, abort, a hand-made policy change) changes nothing.
A hand-made policy change pauses the rollout instead of being overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.exceptions import LockError
from sqlalchemy.exc import SQLAlchemyError

from gateway.lifecycle.sequential import MIN_ARM_SAMPLES, Arm, difference, one_arm, tau2_for
from gateway.serving.catalog import Catalog, ModelEntry
from gateway.traffic.admin import TrafficAdmin
from registry import outcomes as outcomes_sql
from registry import rollouts as rollouts_sql
from registry import service
from registry.db import Database
from registry.errors import Conflict, GatewayError, InvalidInput, NotFound, Unavailable
from registry.names import check_reason
from registry.records import PolicyRecord, RolloutAction, RolloutRecord, RolloutState
from registry.service import iso

log = logging.getLogger(__name__)

METRICS = ("accuracy", "reward")
DEFAULT_STEPS = [5, 25, 50, 100]
DEFAULT_MIN_SAMPLES = 200
P99_MIN_REQUESTS = 100  # fewer answered requests than this have no meaningful p99
MAX_STEPS = 20
CONTROLLER = "rollout-controller"
PLAN_FIELDS = {"candidate", "baseline", "steps", "metric", "min_samples", "max_regression",
               "max_error_rate", "max_p99_ms", "alpha", "reason", "force"}


@dataclass(frozen=True)
class Plan:
    """A validated `rollout start` request (from the CLI or the admin API)."""

    candidate: str
    baseline: str | None
    steps: list[int]
    metric: str
    min_samples: int
    max_regression: float
    max_error_rate: float
    max_p99_ms: float | None
    alpha: float
    reason: str | None
    force: bool


def _number(body: dict[str, Any], key: str, default: float | None, low: float, high: float,
            low_open: bool = False) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{key} must be a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        side = "above" if low_open else "from"
        raise InvalidInput(f"{key} must be {side} {low} {'up ' if low_open else ''}to {high}, "
                           f"got {value!r}")
    return float(value)


def _ref(value: Any, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value).strip() == "":
        raise InvalidInput(f"{key} must be a version number or alias")
    return str(value).strip()


def parse_plan(body: Any) -> Plan:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with at least candidate")
    unknown = sorted(set(body) - PLAN_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; allowed: {sorted(PLAN_FIELDS)}")
    if "candidate" not in body:
        raise InvalidInput("candidate is required: the version to roll out")
    steps = body.get("steps", DEFAULT_STEPS)
    if (not isinstance(steps, list) or not steps or len(steps) > MAX_STEPS
            or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)):
        raise InvalidInput(f"steps must be a list of 1 to {MAX_STEPS} integer percents")
    if any(not 1 <= s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise InvalidInput("steps must be increasing percents from 1 to 100 ending at 100, "
                           f"e.g. 5,25,50,100; got {steps}")
    metric = body.get("metric", "accuracy")
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {list(METRICS)}, got {metric!r}")
    min_samples = body.get("min_samples", DEFAULT_MIN_SAMPLES)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or not (
            10 <= min_samples <= 10_000_000):
        raise InvalidInput(f"min_samples must be an integer from 10 to 10000000, "
                           f"got {min_samples!r}")
    reason = check_reason(body.get("reason"))
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force must be true or false")
    if force and not (reason or "").strip():
        raise InvalidInput("force overrides the evaluation gate and needs a reason")
    regression_cap = 1.0 if metric == "accuracy" else 1e12
    baseline = body.get("baseline")
    return Plan(
        candidate=_ref(body["candidate"], "candidate"),
        baseline=None if baseline is None else _ref(baseline, "baseline"),
        steps=steps, metric=metric, min_samples=min_samples,
        max_regression=_number(body, "max_regression", 0.01, 0.0, regression_cap) or 0.0,
        max_error_rate=_number(body, "max_error_rate", 0.01, 0.0, 1.0) or 0.0,
        max_p99_ms=_number(body, "max_p99_ms", None, 0.0, 3_600_000.0, low_open=True),
        alpha=_number(body, "alpha", 0.05, 0.0, 0.5, low_open=True) or 0.05,
        reason=reason, force=force,
    )


@dataclass(frozen=True)
class Observed:
    """What one look sees in the outcome log, since the rollout started."""

    candidate_requests: int
    candidate_errors: int
    candidate: Arm  # the metric's observations (label correct 0/1, or reward)
    baseline: Arm
    step_samples: int  # the candidate's metric observations since the current step began
    candidate_p99_ms: float | None


@dataclass(frozen=True)
class Decision:
    action: str  # advance | complete | rollback | wait | pause
    reason: str
    numbers: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, **self.numbers,
                "ts": iso(datetime.now(UTC))}


def decide(params: dict[str, Any], steps: list[int], step_index: int, seen: Observed
           ) -> Decision:
    """One look's decision: a pure function of the rollout's parameters and what was seen, so
    the simulation in the tests exercises exactly what the controller runs."""
    alpha = params["alpha"]
    metric = params["metric"]
    diff = difference(seen.candidate, seen.baseline, params["tau2"], alpha)
    errors = one_arm(Arm.proportion(seen.candidate_errors, seen.candidate_requests),
                     params["tau2_errors"], alpha)
    numbers: dict[str, Any] = {
        "step": step_index + 1, "weight": steps[step_index], "metric": metric,
        "candidate": {"requests": seen.candidate_requests, "errors": seen.candidate_errors,
                      "samples": seen.candidate.n, "mean": seen.candidate.mean,
                      "p99_ms": seen.candidate_p99_ms},
        "baseline": {"samples": seen.baseline.n, "mean": seen.baseline.mean},
        "difference": diff.as_dict() if diff else None,
        "error_rate": errors.as_dict() if errors else None,
        "step_samples": seen.step_samples, "min_samples": params["min_samples"],
        "confidence": 1 - alpha,
    }
    if errors is not None and errors.lower > params["max_error_rate"]:
        return Decision("rollback", (
            f"the candidate's error rate {errors.estimate:.4f} is above max_error_rate "
            f"{params['max_error_rate']} (always-valid {100 * (1 - alpha):g}% lower bound "
            f"{errors.lower:.4f})"), numbers)
    p99_limit = params.get("max_p99_ms")
    if p99_limit is not None and seen.candidate_p99_ms is not None and (
            seen.candidate_p99_ms > p99_limit):
        return Decision("rollback", (
            f"the candidate's p99 latency {seen.candidate_p99_ms:.2f} ms is above max_p99_ms "
            f"{p99_limit:g}"), numbers)
    if diff is not None and diff.upper < -params["max_regression"]:
        return Decision("rollback", (
            f"the candidate's {metric} is worse than the baseline's by more than "
            f"max_regression {params['max_regression']:g}: difference {diff.estimate:+.4f}, "
            f"always-valid {100 * (1 - alpha):g}% interval [{diff.lower:+.4f}, "
            f"{diff.upper:+.4f}]"), numbers)
    if seen.step_samples < params["min_samples"]:
        return Decision("wait", (
            f"{seen.step_samples} of {params['min_samples']} {metric} outcomes of the "
            f"candidate at {steps[step_index]}%"), numbers)
    if diff is None:
        return Decision("wait", f"the baseline has fewer than {MIN_ARM_SAMPLES} {metric} "
                                "outcomes since the rollout started to compare with", numbers)
    if step_index == len(steps) - 1:
        return Decision("complete", (
            f"{seen.step_samples} {metric} outcomes at 100% and no regression, error or "
            "latency breach"), numbers)
    return Decision("advance", (
        f"{seen.step_samples} {metric} outcomes at {steps[step_index]}% and no regression, "
        f"error or latency breach: on to {steps[step_index + 1]}%"), numbers)


def planned_tau2(metric: str, min_samples: int, alpha: float, baseline_variance: float | None
                 ) -> tuple[float, float]:
    """Mixing variances fixed at the start (before any rollout data): tightest when each arm
    has `min_samples` observations. Accuracy plans on the Bernoulli maximum 0.25; reward on the
    baseline's variance before the rollout (1.0 without history)."""
    variance = 0.25 if metric == "accuracy" else (baseline_variance or 1.0)
    metric_tau2 = tau2_for(min_samples / (2 * variance), alpha)
    errors_tau2 = tau2_for(min_samples / 0.25, alpha)
    return metric_tau2, errors_tau2


def step_policy(candidate: int, baseline: int, percent: int, live_shadow: dict[str, Any],
                reason: str, forced: bool) -> dict[str, Any]:
    """The traffic body for one step: candidate at `percent`, baseline the rest, the live
    shadows kept except on the two arms (a version cannot be primary and shadow). A rollout
    started past the gate (`force`, audited then) keeps that override for its later steps:
    ops decided it once, for the whole rollout."""
    weights = ({str(candidate): 100} if percent >= 100
               else {str(baseline): 100 - percent, str(candidate): percent})
    body: dict[str, Any] = {
        "weights": weights, "reason": reason,
        "shadow": {v: p for v, p in live_shadow.items()
                   if v not in (str(candidate), str(baseline))}}
    if forced:
        body.update(force=True, reason=f"{reason}; evaluation gate overridden at the start")
    return body


def _parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Rollouts:
    """Starting, looking at, pausing and ending rollouts; used by the controller thread, the
    admin API and the CLI alike."""

    def __init__(self, db: Database, catalog: Catalog, traffic: TrafficAdmin,
                 client: redis.Redis | None, prefix: str, lock_seconds: float = 30.0,
                 on_decision: Callable[[str, str], None] | None = None) -> None:
        """`on_decision(model, action)` is told of every decision that changed something."""
        self.db = db
        self.on_decision = on_decision
        self.catalog = catalog
        self.traffic = traffic
        self.client = client
        self.prefix = prefix
        self.lock_seconds = lock_seconds
        self.ops_lock_wait = 5.0  # how long ops changes wait for a look in progress

    # ---- locking ---------------------------------------------------------------------------

    def _lock(self, model: str, wait: float | None) -> Any:
        """The model's controller lock, acquired (None when no Redis is configured: the CLI
        without a gateway). `wait` None: do not wait; a look skips a model someone holds."""
        if self.client is None:
            return None
        lock = self.client.lock(f"{self.prefix}rollout-lock:{model}",
                                timeout=self.lock_seconds, thread_local=False)
        try:
            acquired = lock.acquire(blocking=wait is not None, blocking_timeout=wait)
        except redis.RedisError:
            raise Unavailable("Redis is unreachable, so rollouts cannot change now") from None
        if not acquired:
            if wait is None:
                return False
            raise Conflict(f"the rollout of {model!r} is being changed by another process; "
                           "retry in a moment")
        return lock

    @staticmethod
    def _release(lock: Any) -> None:
        if lock:
            try:
                lock.release()
            except (LockError, redis.RedisError):  # expired: someone else may hold it now
                log.warning("rollout lock expired before it was released")

    # ---- ops -------------------------------------------------------------------------------

    def start(self, model: str, body: Any, actor: str) -> RolloutRecord:
        plan = parse_plan(body)
        entry = self.catalog.read_model(model)
        candidate = self._version(entry, plan.candidate, "candidate")
        live = self.traffic.show(model)
        baseline = (self._version(entry, plan.baseline, "baseline") if plan.baseline
                    else self._baseline(entry, live))
        if baseline == candidate:
            raise InvalidInput(f"version {candidate} is the baseline (it serves the traffic "
                               "now); roll out a different version, or name --baseline")
        variance = None
        if plan.metric == "reward":
            history = {r["version"]: r for r in outcomes_sql.primary_stats(self.db, model, None,
                                                                           None)}
            base = history.get(baseline)
            if base and base["rewarded"] >= 30:
                variance = Arm.from_sums(base["rewarded"], base["reward_sum"],
                                         base["reward_sq"]).variance or None
        tau2, tau2_errors = planned_tau2(plan.metric, plan.min_samples, plan.alpha, variance)
        params = {"metric": plan.metric, "min_samples": plan.min_samples,
                  "max_regression": plan.max_regression, "max_error_rate": plan.max_error_rate,
                  "max_p99_ms": plan.max_p99_ms, "alpha": plan.alpha, "tau2": tau2,
                  "tau2_errors": tau2_errors, "forced": plan.force}
        previous = {"revision": live["revision"], "weights": live["weights"],
                    "shadow": live["shadow"]}
        lock = self._lock(model, wait=self.ops_lock_wait)
        try:
            row = rollouts_sql.create(self.db, model, candidate, baseline, plan.steps, params,
                                      previous, actor, plan.reason)
            policy_body = step_policy(
                candidate, baseline, plan.steps[0], live["shadow"],
                f"rollout {row['id']}: candidate {candidate} at {plan.steps[0]}%"
                + (f" ({plan.reason})" if plan.reason else ""), plan.force)
            try:
                policy = self.traffic.set(model, policy_body, actor, live["revision"])
            except Exception:
                rollouts_sql.discard(self.db, row["id"])
                raise
            decision = {"action": "start", "reason": f"candidate {candidate} at "
                        f"{plan.steps[0]}% against baseline {baseline}",
                        "ts": iso(datetime.now(UTC))}
            return rollouts_sql.update(
                self.db, model, row["id"], "running", 0, actor, "rollout.start",
                {"revision": policy["revision"], "last_decision": decision},
                detail={"candidate": candidate, "baseline": baseline, "steps": plan.steps,
                        "params": params, "revision": policy["revision"]},
                reason=plan.reason)
        finally:
            self._release(lock)

    def _version(self, entry: ModelEntry, ref: str, what: str) -> int:
        try:
            info, _ = self.catalog.read_version(entry, ref)
        except NotFound as exc:
            raise InvalidInput(f"{what}: {exc.message}") from None
        return info.version

    def _baseline(self, entry: ModelEntry, live: PolicyRecord) -> int:
        """What serves now: the champion if it has weight, else the heaviest version, else
        (no policy yet) the newest live version."""
        weights = {int(v): w for v, w in live["weights"].items() if w > 0}
        champion = entry.aliases.get("champion")
        if champion is not None and champion in weights:
            return champion
        if weights:
            return max(weights, key=lambda v: (weights[v], -v))
        latest = entry.latest_live
        if latest is None:
            raise Conflict(f"model {entry.name!r} has no version serving to compare with")
        return latest.version

    def status(self, model: str) -> RolloutRecord:
        self.catalog.read_model(model)
        current = rollouts_sql.current(self.db, model)
        if current is None:
            raise NotFound(f"model {model!r} has no rollout; start one with gateway rollout "
                           "start")
        current["decisions"] = rollouts_sql.decisions(self.db, model, current["id"])
        return current

    def _active(self, model: str) -> RolloutRecord:
        current = rollouts_sql.current(self.db, model)
        if current is None or current["state"] not in rollouts_sql.ACTIVE:
            raise Conflict(f"model {model!r} has no active rollout")
        return current

    @contextlib.contextmanager
    def _ops_change(self, model: str, expect: RolloutState | None) -> Iterator[RolloutRecord]:
        """The active rollout, read under the model's lock (waiting briefly for a look in
        progress); `expect` None accepts running and paused alike."""
        self.catalog.read_model(model)
        lock = self._lock(model, wait=self.ops_lock_wait)
        try:
            current = self._active(model)
            if expect is not None and current["state"] != expect:
                raise Conflict(f"the rollout of {model!r} is {current['state']}, not {expect}")
            yield current
        finally:
            self._release(lock)

    def _ops_update(self, model: str, current: RolloutRecord, actor: str,
                    action: RolloutAction, changes: dict[str, Any], reason: str | None,
                    text: str) -> RolloutRecord:
        return rollouts_sql.update(
            self.db, model, current["id"], current["state"], current["step_index"], actor,
            f"rollout.{action}",
            {**changes, "last_decision": {"action": action, "reason": reason or text}},
            reason=reason)

    def pause(self, model: str, actor: str, reason: Any = None) -> RolloutRecord:
        reason = check_reason(reason)
        with self._ops_change(model, "running") as current:
            return self._ops_update(model, current, actor, "pause", {"state": "paused"},
                                    reason, "paused by ops")

    def resume(self, model: str, actor: str, reason: Any = None) -> RolloutRecord:
        """Continue at the current step, re-applying its weights over whatever is live."""
        reason = check_reason(reason)
        with self._ops_change(model, "paused") as current:
            live = self.traffic.show(model)
            policy = self.traffic.set(model, step_policy(
                current["candidate"], current["baseline"], current["weight"], live["shadow"],
                f"rollout {current['id']} resumed at {current['weight']}%",
                current["params"].get("forced", False)), actor, live["revision"])
            return self._ops_update(model, current, actor, "resume",
                                    {"state": "running", "revision": policy["revision"]},
                                    reason, "resumed by ops")

    def abort(self, model: str, actor: str, reason: Any = None) -> RolloutRecord:
        """Stop and put the policy from before the rollout back."""
        reason = check_reason(reason)
        with self._ops_change(model, None) as current:
            revision = self._restore(model, current, actor, f"rollout {current['id']} "
                                     f"aborted: {reason or 'aborted by ops'}", None)
            return self._ops_update(model, current, actor, "abort",
                                    {"state": "aborted", "finished_at": datetime.now(UTC),
                                     "revision": revision}, reason, "aborted by ops")

    def _restore(self, model: str, current: RolloutRecord, actor: str, reason: str,
                 if_match: int | None) -> int:
        """Put the pre-rollout weights back; forced past the gate, because the way back must
        always be open (the override is audited like any other)."""
        previous = current["previous_policy"]
        weights = previous["weights"] or {str(current["baseline"]): 100}
        shadow = {v: p for v, p in previous["shadow"].items() if v not in weights}
        policy = self.traffic.set(model, {"weights": weights, "shadow": shadow,
                                          "reason": reason, "force": True}, actor, if_match)
        return int(policy["revision"])

    # ---- the controller's look -------------------------------------------------------------

    def tick_all(self) -> dict[str, Decision | None]:
        out: dict[str, Decision | None] = {}
        for model in rollouts_sql.running_models(self.db):
            try:
                out[model] = self.tick(model)
            except (GatewayError, SQLAlchemyError, redis.RedisError) as exc:
                log.warning("rollout look at %s failed: %s", model, exc)
                out[model] = None
        return out

    def tick(self, model: str) -> Decision | None:
        """One look at a model's running rollout; None when there is none, or another process
        holds the model's lock."""
        lock = self._lock(model, wait=None)
        if lock is False:
            return None
        try:
            current = rollouts_sql.current(self.db, model)
            if current is None or current["state"] != "running":
                return None
            return self._look(model, current)
        finally:
            self._release(lock)

    def observe(self, model: str, current: RolloutRecord) -> Observed:
        candidate, baseline = current["candidate"], current["baseline"]
        since = _parse_ts(current["started_at"])
        rows = {r["version"]: r for r in outcomes_sql.primary_stats(self.db, model, since, None)}
        step_rows = {r["version"]: r for r in outcomes_sql.primary_stats(
            self.db, model, _parse_ts(current["step_started_at"]), None)}
        empty = {"requests": 0, "errors": 0, "labelled": 0, "correct": 0, "rewarded": 0,
                 "reward_sum": 0.0, "reward_sq": 0.0}
        cand, base = rows.get(candidate, empty), rows.get(baseline, empty)
        step = step_rows.get(candidate, empty)
        if current["params"]["metric"] == "accuracy":
            cand_arm = Arm.proportion(cand["correct"], cand["labelled"])
            base_arm = Arm.proportion(base["correct"], base["labelled"])
            step_samples = step["labelled"]
        else:
            cand_arm = Arm.from_sums(cand["rewarded"], cand["reward_sum"], cand["reward_sq"])
            base_arm = Arm.from_sums(base["rewarded"], base["reward_sum"], base["reward_sq"])
            step_samples = step["rewarded"]
        p99 = None
        answered = cand["requests"] - cand["errors"] - cand.get("client_errors", 0)
        if current["params"].get("max_p99_ms") is not None and answered >= P99_MIN_REQUESTS:
            p99 = outcomes_sql.latency_percentiles(self.db, model, candidate, cand["requests"],
                                                   since, None, quantiles=(0.99,)).get("p99")
        return Observed(cand["requests"], cand["errors"], cand_arm, base_arm, step_samples, p99)

    def _look(self, model: str, current: RolloutRecord) -> Decision:
        rid, step = current["id"], current["step_index"]
        live = self.traffic.show(model)
        if live["revision"] != current["revision"]:
            decision = Decision("pause", (
                f"the traffic policy was changed outside the rollout (live revision "
                f"{live['revision']}, the rollout's {current['revision']}); paused so as not "
                "to overwrite it: resume to re-apply this step, or abort"), {})
            rollouts_sql.update(self.db, model, rid, "running", step, CONTROLLER,
                                "rollout.pause", {"state": "paused",
                                                  "last_decision": decision.as_dict()},
                                detail=decision.as_dict())
            self._told(model, decision)
            return decision
        decision = decide(current["params"], current["steps"], step,
                          self.observe(model, current))
        record = decision.as_dict()
        try:
            if decision.action == "wait":
                first_hold = (current["last_decision"] or {}).get("action") != "wait"
                rollouts_sql.update(self.db, model, rid, "running", step, CONTROLLER,
                                    "rollout.wait" if first_hold else None,
                                    {"last_decision": record}, detail=record)
            elif decision.action == "advance":
                policy = self.traffic.set(model, step_policy(
                    current["candidate"], current["baseline"], current["steps"][step + 1],
                    live["shadow"], f"rollout {rid}: {decision.reason}",
                    current["params"].get("forced", False)), CONTROLLER, current["revision"])
                rollouts_sql.update(self.db, model, rid, "running", step, CONTROLLER,
                                    "rollout.advance",
                                    {"step_index": step + 1, "revision": policy["revision"],
                                     "step_started_at": datetime.now(UTC),
                                     "last_decision": record}, detail=record)
            elif decision.action == "complete":
                service.set_alias(self.db, model, "champion", current["candidate"], CONTROLLER,
                                  reason=f"rollout {rid} completed")
                rollouts_sql.update(self.db, model, rid, "running", step, CONTROLLER,
                                    "rollout.complete",
                                    {"state": "completed", "finished_at": datetime.now(UTC),
                                     "last_decision": record}, detail=record)
            elif decision.action == "rollback":
                revision = self._restore(model, current, CONTROLLER,
                                         f"rollout {rid} rolled back: {decision.reason}",
                                         current["revision"])
                rollouts_sql.update(self.db, model, rid, "running", step, CONTROLLER,
                                    "rollout.rollback",
                                    {"state": "rolled_back", "revision": revision,
                                     "finished_at": datetime.now(UTC),
                                     "last_decision": record}, detail=record)
        except Conflict as exc:  # ops or a hand-made policy change got there first
            log.info("rollout %s of %s: %s; looking again next time", rid, model, exc.message)
        except InvalidInput as exc:  # e.g. a gate set since the start refuses the next step
            decision = Decision("pause", f"the traffic change was refused: {exc.message}; "
                                "paused: fix it and resume, or abort", decision.numbers)
            rollouts_sql.update(self.db, model, rid, "running", step, CONTROLLER,
                                "rollout.pause", {"state": "paused",
                                                  "last_decision": decision.as_dict()},
                                detail=decision.as_dict())
        self._told(model, decision)
        return decision

    def _told(self, model: str, decision: Decision) -> None:
        if decision.action != "wait" and self.on_decision is not None:
            self.on_decision(model, decision.action)


class RolloutController:
    """A daemon thread per process that looks at every running rollout each interval. Every
    worker runs one; the per-model lock makes them take turns."""

    def __init__(self, rollouts: Rollouts, interval_seconds: float) -> None:
        self.rollouts = rollouts
        self.interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rollout-controller",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.rollouts.tick_all()
            except Exception:  # never let one bad look end the controller
                log.exception("rollout controller look failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
