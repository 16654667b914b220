"""The evaluation gate: rules a version's latest evaluation must pass before a traffic policy may
give it weight.

A rule is a string a person can read in an error message and type on a command line:
`accuracy >= 0.95` (an absolute bound) or `accuracy >= champion - 0.01` (relative to the
champion's evaluation on the same dataset, since numbers on different data do not compare).
Rules are parsed and stored normalised, so what `models gate` shows is what is enforced.

The champion is the version the `champion` alias points at; without that alias, the version with
the largest weight in the live policy (the lower number on a tie). A relative rule passes, with
a note, when there is no champion yet or the version is the champion itself: the first version
of a model must be able to take traffic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from registry import traffic as sql_traffic
from registry.db import Database
from registry.errors import InvalidInput
from registry.evaluations import get_gate, latest_in
from registry.service import _model_or_404, _version_or_404
from registry.tables import Alias, Evaluation

METRICS = ("accuracy", "log_loss", "latency_p50_ms", "latency_p99_ms")
OPERATORS = (">=", "<=", ">", "<")
MAX_RULES = 20
MAX_RULE_CHARS = 200
CHAMPION_ALIAS = "champion"

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RULE = re.compile(
    rf"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<champion>champion)\s*(?:(?P<sign>[+-])\s*(?P<offset>{_NUMBER}))?"
    rf"|(?P<bound>{_NUMBER}))\s*$"
)


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    value: float  # the bound, or the offset added to the champion's value
    relative: bool

    def __str__(self) -> str:
        if not self.relative:
            return f"{self.metric} {self.op} {_number(self.value)}"
        if self.value == 0:
            return f"{self.metric} {self.op} champion"
        sign = "-" if self.value < 0 else "+"
        return f"{self.metric} {self.op} champion {sign} {_number(abs(self.value))}"

    def holds(self, value: float, bound: float) -> bool:
        return {">=": value >= bound, "<=": value <= bound, ">": value > bound,
                "<": value < bound}[self.op]


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def parse_rule(text: Any) -> Rule:
    if not isinstance(text, str) or len(text) > MAX_RULE_CHARS:
        raise InvalidInput(f"a gate rule must be a string of at most {MAX_RULE_CHARS} characters")
    match = _RULE.match(text)
    if match is None:
        raise InvalidInput(
            f"gate rule {text!r} is not METRIC OP NUMBER or METRIC OP champion [+|-] NUMBER, "
            f"with OP one of {' '.join(OPERATORS)} (e.g. 'accuracy >= 0.95', "
            "'accuracy >= champion - 0.01')")
    metric = match["metric"]
    if metric not in METRICS:
        raise InvalidInput(f"gate rule {text!r}: unknown metric {metric!r}; the gate knows "
                           f"{', '.join(METRICS)}")
    if match["champion"]:
        offset = float(match["offset"]) if match["offset"] else 0.0
        value = -offset if match["sign"] == "-" else offset
    else:
        value = float(match["bound"])
    if not math.isfinite(value):
        raise InvalidInput(f"gate rule {text!r}: the number must be finite")
    return Rule(metric=metric, op=match["op"], value=value + 0.0,
                relative=bool(match["champion"]))


def normalise_rules(rules: Any) -> list[str]:
    """Parse every rule (refusing the first bad one) and return them in canonical form."""
    if not isinstance(rules, list) or not rules:
        raise InvalidInput("a gate is a non-empty list of rules (or clear it)")
    if len(rules) > MAX_RULES:
        raise InvalidInput(f"a gate has at most {MAX_RULES} rules, got {len(rules)}")
    out: list[str] = []
    for text in rules:
        canonical = str(parse_rule(text))
        if canonical not in out:
            out.append(canonical)
    return out


@dataclass
class GateResult:
    """Whether a version passes its model's gate; `failures` name rule, value and data."""

    model: str
    version: int
    rules: list[str]
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evaluation: int | None = None
    champion: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "rules": self.rules,
                "passed": self.passed, "failures": self.failures, "notes": self.notes,
                "evaluation": self.evaluation, "champion": self.champion}


def champion_version(db: Database, model: str) -> int | None:
    """The `champion` alias's version, else the live policy's heaviest version."""
    with db.read() as session:
        row = _model_or_404(session, model)
        aliased = session.scalar(select(Alias.version).where(
            Alias.model_id == row.id, Alias.name == CHAMPION_ALIAS))
        if aliased is not None:
            return int(aliased)
    policy = sql_traffic.live_policy(db, model)
    weights = policy["weights"] if policy is not None else {}
    live = [(int(v), int(w)) for v, w in weights.items() if w > 0]
    if not live:
        return None
    return min(live, key=lambda vw: (-vw[1], vw[0]))[0]


def _dataset_text(evaluation: Evaluation) -> str:
    return (f"evaluation {evaluation.id}, dataset {evaluation.dataset_name} "
            f"{evaluation.dataset_sha256[:12]}")


def _value(evaluation: Evaluation, metric: str) -> float | None:
    value = (evaluation.metrics or {}).get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def check_gate(db: Database, model: str, version_ref: str | int,
               champion: int | None = None) -> GateResult | None:
    """Check one version against its model's gate; None when the model has no gate.
    `champion` may be passed when checking several versions against one policy change."""
    if champion is None:
        champion = champion_version(db, model)
    with db.read() as session:
        row = _model_or_404(session, model)
        number = _version_or_404(session, row, version_ref).version
        if not row.gate:
            return None
        result = GateResult(model=model, version=number, rules=list(row.gate),
                            champion=champion)
        mine = latest_in(session, row, number)
        if mine is None:
            result.passed = False
            result.failures.append(
                f"version {number} has no evaluation: run gateway models evaluate {model} "
                f"{number} --dataset FILE")
            return result
        result.evaluation = mine.id
        theirs: Evaluation | None = None
        if champion is not None and champion != number:
            theirs = latest_in(session, row, champion, mine.dataset_sha256)
        for text in row.gate:
            failure = _check_rule(parse_rule(text), number, mine, champion, theirs, result)
            if failure:
                result.failures.append(f"rule '{text}' fails: {failure}")
        result.passed = not result.failures
        return result


def _check_rule(rule: Rule, number: int, mine: Evaluation, champion: int | None,
                theirs: Evaluation | None, result: GateResult) -> str | None:
    """Why the rule fails for this version (None when it holds); notes go on `result`."""
    value = _value(mine, rule.metric)
    if value is None:
        return f"{rule.metric} was not measured ({_dataset_text(mine)})"
    if not rule.relative:
        if rule.holds(value, rule.value):
            return None
        return f"{rule.metric} is {value:.4f} ({_dataset_text(mine)})"
    if champion is None or champion == number:
        why = "there is no champion yet" if champion is None else f"version {number} is the " \
              "champion"
        result.notes.append(f"rule '{rule}' passes: {why}")
        return None
    if theirs is None:
        return (f"champion version {champion} has no evaluation on dataset "
                f"{mine.dataset_name} {mine.dataset_sha256[:12]} to compare with: run gateway "
                f"models evaluate {result.model} {champion} --dataset {mine.dataset_name}")
    reference = _value(theirs, rule.metric)
    if reference is None:
        return f"{rule.metric} was not measured for champion version {champion}"
    bound = reference + rule.value
    if rule.holds(value, bound):
        return None
    return (f"{rule.metric} is {value:.4f} ({_dataset_text(mine)}); champion version {champion} "
            f"has {reference:.4f} (evaluation {theirs.id}), so the bound is {bound:.4f}")


def gate_failures(db: Database, model: str, versions: list[int]) -> list[str]:
    """Every failed rule of the versions a policy change would give weight, one line each."""
    if not versions or get_gate(db, model) is None:
        return []
    champion = champion_version(db, model)
    failures: list[str] = []
    for number in versions:
        result = check_gate(db, model, number, champion)
        if result is not None and not result.passed:
            failures.extend(f"version {number}: {line}" if line.startswith("rule") else line
                            for line in result.failures)
    return failures


def gate_status(db: Database, model: str) -> dict[str, Any]:
    """The gate and where each live version stands against it: `gateway models gate` and
    `GET /admin/models/{name}/gate` show this."""
    from registry import evaluations, service

    rules = evaluations.get_gate(db, model)
    found = [m for m in service.list_models(db) if m["model"] == model]
    numbers = [v["version"] for v in found[0]["versions"] if v["stage"] != "archived"] \
        if found else []
    statuses = []
    for number in numbers:
        result = check_gate(db, model, number)
        if result is not None:
            statuses.append(result.to_dict())
    return {"model": model, "rules": rules, "versions": statuses}
