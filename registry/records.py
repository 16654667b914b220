"""The records that cross seams, typed: what the data plane logs, what a policy, a rollout and a
version look like outside the database. Their enumerations are `Literal`s, so mypy catches a
misspelt kind, reason, state or action wherever it is written.

They live in `registry` because both sides of each seam use them and `registry` is the layer
everything else may import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np

Kind = Literal["primary", "shadow"]
# why this version served: by weight, by sticky key, pinned by number or alias, the newest
# version when no policy exists, or a shadow copy
Reason = Literal["weight", "sticky", "pin", "alias", "default", "shadow"]
PolicyAction = Literal["set", "rollback"]
Stage = Literal["registered", "archived"]
RolloutState = Literal["running", "paused", "completed", "rolled_back", "aborted"]
RolloutAction = Literal["start", "wait", "advance", "complete", "rollback", "pause", "resume",
                        "abort"]


class OutcomeRow(TypedDict):
    """One served request by one version, as the data plane hands it to the outcome log.

    `outputs` (the raw arrays) and `inputs` (arrays, when sampled for drift) are summarised into
    `prediction`, `predicted_label` and rows of features by the flusher, off the request thread
    (`gateway.outcomes.log.complete_row`)."""

    request_id: str
    model: str
    version: int
    kind: Kind
    reason: Reason
    revision: int | None
    ts: datetime
    latency_ms: float
    model_ms: float | None
    status: int
    error_code: str | None
    input_sha256: str | None
    inputs: tuple[np.ndarray, ...] | list[list[float]] | None
    caller: str | None  # key id of the token that made the request
    outputs: NotRequired[dict[str, np.ndarray] | None]
    prediction: NotRequired[dict[str, Any] | None]
    predicted_label: NotRequired[int | None]


class PolicyRecord(TypedDict):
    """A traffic policy revision as the API shows it (`GET /admin/models/{name}/traffic`)."""

    model: str
    revision: int
    weights: dict[str, int]  # version -> weight
    shadow: dict[str, float]  # version -> percent of routed requests copied
    updated_at: str | None
    updated_by: str | None
    reason: str | None
    action: NotRequired[PolicyAction]  # in the history, not in the live policy


class RolloutRecord(TypedDict):
    id: int
    model: str
    candidate: int
    baseline: int
    state: RolloutState
    steps: list[int]
    step_index: int
    weight: int
    params: dict[str, Any]
    previous_policy: dict[str, Any]
    revision: int | None
    started_at: str  # never NULL in the table
    step_started_at: str
    updated_at: str | None
    finished_at: str | None
    created_by: str
    reason: str | None
    last_decision: dict[str, Any] | None
    decisions: NotRequired[list[dict[str, Any]]]


class VersionRecord(TypedDict):
    """A version as `GET /admin/models/{name}/versions/{v}` shows it (before the lifecycle's
    summary: evaluation, gate and comparison with the parent are added by the caller)."""

    model: str
    version: int
    sha256: str
    size_bytes: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    opset: int | None
    stage: Stage
    created_at: str | None
    created_by: str
    description: str | None
    dataset: dict[str, Any] | None
    params: dict[str, Any] | None
    metrics: dict[str, Any] | None
    parent_version: int | None
    aliases: list[str]
    archived_at: str | None
    archived_reason: str | None
    lineage: NotRequired[dict[str, Any]]  # get_version: parent, ancestors, children
