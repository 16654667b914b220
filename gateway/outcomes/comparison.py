"""The analysts' comparison of versions: SQL aggregates in, intervals and tests out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.outcomes import stats
from registry import outcomes as sql
from registry.db import Database
from registry.errors import InvalidInput


def parse_time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
                           ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    start, end = parse_time(since, "since"), parse_time(until, "until")
    if start and end and start >= end:
        raise InvalidInput("since must be before until")
    return start, end


def _interval(pair: tuple[float, float] | None) -> list[float] | None:
    return [pair[0], pair[1]] if pair else None


def compare(db: Database, model: str, since: datetime | None, until: datetime | None
            ) -> dict[str, Any]:
    rows = sql.primary_stats(db, model, since, until)
    alias = sql.champion_alias(db, model)
    champion_source = "alias"
    champion = alias if alias is not None and any(r["version"] == alias for r in rows) else None
    if champion is None and rows:
        champion = max(rows, key=lambda r: (r["requests"], -r["version"]))["version"]
        champion_source = "most_requests"
    by_version = {r["version"]: r for r in rows}
    versions = []
    for row in rows:
        reward = stats.summarise(row["rewarded"], row["reward_sum"], row["reward_sq"])
        entry: dict[str, Any] = {
            "version": row["version"],
            "requests": row["requests"],
            "errors": row["errors"],
            "error_rate": row["errors"] / row["requests"] if row["requests"] else None,
            "client_errors": row["client_errors"],
            "latency_ms": sql.latency_percentiles(db, model, row["version"], row["requests"],
                                                  since, until),
            "feedback": row["feedback"],
            "accuracy": None,
            "reward": None,
            "vs_champion": None,
        }
        if row["labelled"]:
            entry["accuracy"] = {
                "n": row["labelled"], "correct": row["correct"],
                "value": row["correct"] / row["labelled"],
                "ci95": _interval(stats.wilson_interval(row["correct"], row["labelled"])),
            }
        if reward is not None:
            entry["reward"] = {"n": reward.n, "mean": reward.mean,
                               "ci95": _interval(stats.mean_interval(reward))}
        if champion is not None and row["version"] != champion:
            entry["vs_champion"] = _versus(row, by_version[champion])
        versions.append(entry)
    shadow = []
    for item in sql.shadow_agreement(db, model, since, until):
        compared = item["compared"]
        shadow.append({**item, "agreement": item["agreed"] / compared if compared else None,
                       "ci95": _interval(stats.wilson_interval(item["agreed"], compared))})
    return {
        "model": model,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "champion": {"version": champion, "source": champion_source} if champion else None,
        "versions": versions,
        "shadow": shadow,
    }


def _versus(row: dict[str, Any], champ: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"champion": champ["version"]}
    test = stats.two_proportion_z_test(row["correct"], row["labelled"], champ["correct"],
                                       champ["labelled"])
    out["accuracy"] = {"difference": test[0], "p_value": test[1]} if test else None
    mine = stats.summarise(row["rewarded"], row["reward_sum"], row["reward_sq"])
    theirs = stats.summarise(champ["rewarded"], champ["reward_sum"], champ["reward_sq"])
    welch = stats.welch_t_test(mine, theirs) if mine and theirs else None
    out["reward"] = {"difference": welch[0], "p_value": welch[1]} if welch else None
    return out
