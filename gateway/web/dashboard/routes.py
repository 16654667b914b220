"""`/dashboard`: the page for people (analysts and ops), server-rendered, no JavaScript.

A browser cannot send `Authorization: Bearer` when it navigates, so a person pastes a token
into `/dashboard/login` once; it is kept in the signed, HttpOnly, SameSite=Strict session
cookie and the auth hook (`gateway.web.auth`) reads it from there for this blueprint only. Clients
that do send the header keep working as with every other route.

Charts are inline SVG drawn here on the server from SQL aggregates (`registry.timeseries`):
nothing is fetched from the internet, no build step, and the page works with scripts off.

Ops change traffic through the same `TrafficAdmin` as the API (same validation, same audit),
with a CSRF token from the session in every form and the live revision as `If-Match`, so a
page loaded before someone else's change gets a conflict instead of silently undoing it.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup, escape

from gateway.outcomes import stats
from gateway.outcomes.comparison import compare
from gateway.services import Services
from gateway.traffic.admin import parse_if_match
from gateway.web.current import services
from gateway.web.dashboard.drift import drift_view
from gateway.web.dashboard.rollouts import rollout_view
from gateway.web.errors import error_response
from gateway.web.writes import announce_writes
from registry import service, timeseries
from registry.errors import Conflict, Forbidden, GatewayError, InvalidInput, Unauthorized
from registry.names import ascii_number, check_model_name, check_reason

bp = Blueprint("dashboard", __name__)
bp.after_request(announce_writes)
login_bp = Blueprint("dashboard_login", __name__)

DASHBOARD_ROLES = ("analyst", "ops")
HISTORY_LIMIT = 20
DEFAULT_HOURS = 24
MAX_HOURS = 24 * 90  # the default outcome retention
HOUR_CHOICES = (1, 6, 24, 168, 720)
TARGET_BUCKETS = 24
BUCKET_CHOICES = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                  172800, 259200, 604800)
MAX_TOKEN_CHARS = 512
FORM_MIMETYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# Tableau 10: distinguishable, colour-blind-friendlier than a rainbow; a version keeps its
# colour on every chart and in the traffic bar.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")


def version_colour(version: int) -> str:
    return PALETTE[(version - 1) % len(PALETTE)]


# ---------------------------------------------------------------------------------------------
# SVG line charts
# ---------------------------------------------------------------------------------------------

Point = tuple[float, float, str]  # x (epoch seconds), y, tooltip
BandPoint = tuple[float, float, float]  # x, low, high


@dataclass(frozen=True)
class Series:
    """One line: a version (or a version's statistic, e.g. its p95) over the time axis."""

    version: int
    label: str
    points: tuple[Point, ...]
    band: tuple[BandPoint, ...] = ()
    stat: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class TimeAxis:
    """The x axis: [start, end) in epoch seconds, cut into buckets of `step` seconds."""

    start: int
    end: int
    step: int


@dataclass(frozen=True)
class ChartSpec:
    key: str  # the `data-chart` marker tests and people's tools can find the chart by
    title: str
    unit: str
    fmt: Callable[[float], str]
    y_range: tuple[float, float] | None = None  # fixed bounds (accuracy: 0..1)
    integer: bool = False
    empty: str = "no data in this window"


@dataclass(frozen=True)
class Frame:
    """Where the plot area sits inside the SVG, and the data ranges it maps."""

    axis: TimeAxis
    y_low: float
    y_high: float
    left: float = 60.0
    top: float = 30.0
    width: float = 560.0
    height: float = 150.0

    def x(self, value: float) -> float:
        span = max(1, self.axis.end - self.axis.start)
        return self.left + (value - self.axis.start) / span * self.width

    def y(self, value: float) -> float:
        span = (self.y_high - self.y_low) or 1.0
        return self.top + self.height - (value - self.y_low) / span * self.height


SVG_WIDTH = 640
LEGEND_ROW = 18


def nice_ticks(low: float, high: float, count: int = 4, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high] (steps of 1, 2, 2.5 or 5 times a power of 10)."""
    if not high > low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.floor(low / step) * step
    last = math.ceil(high / step) * step
    return [first + i * step for i in range(round((last - first) / step) + 1)]


def _time_label(ts: float, axis: TimeAxis) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    if axis.step >= 86400:
        return moment.strftime("%d %b")
    if axis.end - axis.start > 86400:
        return moment.strftime("%d %b %H:%M")
    return moment.strftime("%H:%M")


def _num(value: float) -> str:
    return f"{value:.1f}"


def _y_bounds(spec: ChartSpec, series: list[Series]) -> list[float]:
    if spec.y_range is not None:
        return nice_ticks(spec.y_range[0], spec.y_range[1])
    values = [p[1] for s in series for p in s.points]
    values += [v for s in series for b in s.band for v in b[1:]]
    return nice_ticks(min([0.0, *values]), max([0.0, *values]), integer=spec.integer)


def _segments(items: Iterable[Any], step: int) -> list[list[Any]]:
    """Split points where a bucket is missing, so a line never bridges a gap in the data."""
    out: list[list[Any]] = []
    previous: float | None = None
    for item in items:
        if previous is None or item[0] - previous > step * 1.5:
            out.append([])
        out[-1].append(item)
        previous = item[0]
    return out


def _axes_svg(spec: ChartSpec, frame: Frame, ticks: list[float]) -> list[str]:
    parts = []
    for tick in ticks:
        y = frame.y(tick)
        parts.append(f'<line class="grid" x1="{_num(frame.left)}" x2="'
                     f'{_num(frame.left + frame.width)}" y1="{_num(y)}" y2="{_num(y)}"/>')
        parts.append(f'<text class="tick" x="{_num(frame.left - 6)}" y="{_num(y + 4)}" '
                     f'text-anchor="end">{escape(spec.fmt(tick))}</text>')
    axis = frame.axis
    buckets = max(1, (axis.end - axis.start) // axis.step)
    every = max(1, math.ceil(buckets / 6))
    bottom = frame.top + frame.height
    for i in range(0, buckets + 1, every):
        ts = axis.start + i * axis.step
        x = frame.x(ts)
        parts.append(f'<line class="axis" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(bottom)}" '
                     f'y2="{_num(bottom + 4)}"/>')
        parts.append(f'<text class="tick" x="{_num(x)}" y="{_num(bottom + 16)}" '
                     f'text-anchor="middle">{escape(_time_label(ts, axis))}</text>')
    parts.append(f'<line class="axis" x1="{_num(frame.left)}" x2="{_num(frame.left + frame.width)}'
                 f'" y1="{_num(bottom)}" y2="{_num(bottom)}"/>')
    parts.append(f'<text class="axis-label" x="{_num(frame.left + frame.width)}" '
                 f'y="{_num(bottom + 30)}" text-anchor="end">time (UTC), '
                 f'{escape(_duration(axis.step))} buckets</text>')
    mid = frame.top + frame.height / 2
    parts.append(f'<text class="axis-label" x="14" y="{_num(mid)}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {_num(mid)})">{escape(spec.unit)}</text>')
    return parts


def _series_svg(series: Series, frame: Frame) -> str:
    colour = version_colour(series.version)
    parts = [f'<g class="series v{series.version}" data-version="{series.version}"'
             + (f' data-stat="{escape(series.stat)}"' if series.stat else "") + ">"]
    for segment in _segments(series.band, frame.axis.step):
        upper = [f"{_num(frame.x(x))},{_num(frame.y(high))}" for x, _, high in segment]
        lower = [f"{_num(frame.x(x))},{_num(frame.y(low))}" for x, low, _ in reversed(segment)]
        if len(segment) == 1:  # a lone bucket: draw its interval as a bar
            x = frame.x(segment[0][0])
            upper = [f"{_num(x - 4)},{_num(frame.y(segment[0][2]))}",
                     f"{_num(x + 4)},{_num(frame.y(segment[0][2]))}"]
            lower = [f"{_num(x + 4)},{_num(frame.y(segment[0][1]))}",
                     f"{_num(x - 4)},{_num(frame.y(segment[0][1]))}"]
        parts.append(f'<polygon class="band" fill="{colour}" fill-opacity="0.15" '
                     f'points="{" ".join(upper + lower)}"/>')
    dash = ' stroke-dasharray="5 4"' if series.dashed else ""
    for segment in _segments(series.points, frame.axis.step):
        path = " ".join(f"{'M' if i == 0 else 'L'}{_num(frame.x(x))},{_num(frame.y(y))}"
                        for i, (x, y, _) in enumerate(segment))
        parts.append(f'<path class="line" d="{path}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"{dash}/>')
    for x, y, tip in series.points:
        parts.append(f'<circle cx="{_num(frame.x(x))}" cy="{_num(frame.y(y))}" r="2.5" '
                     f'fill="{colour}"><title>{escape(tip)}</title></circle>')
    parts.append("</g>")
    return "".join(parts)


def _legend_svg(series: list[Series], top: float) -> tuple[list[str], int]:
    """Legend entries in rows under the x axis; returns the SVG and the number of rows."""
    parts: list[str] = []
    x, row = 60.0, 0
    seen: set[str] = set()
    for item in series:
        if item.label in seen:
            continue
        seen.add(item.label)
        width = 30 + 7 * len(item.label)
        if x + width > SVG_WIDTH - 10 and x > 60:
            x, row = 60.0, row + 1
        y = top + row * LEGEND_ROW
        dash = ' stroke-dasharray="5 4"' if item.dashed else ""
        parts.append(f'<g class="legend-item"><line x1="{_num(x)}" x2="{_num(x + 18)}" '
                     f'y1="{_num(y - 4)}" y2="{_num(y - 4)}" stroke="'
                     f'{version_colour(item.version)}" stroke-width="3"{dash}/>'
                     f'<text x="{_num(x + 23)}" y="{_num(y)}">{escape(item.label)}</text></g>')
        x += width
    return parts, row + 1 if parts else 0


def line_chart(spec: ChartSpec, axis: TimeAxis, series: list[Series]) -> Markup:
    """An inline SVG line chart: one line per series, optional interval bands, axes, legend.

    All text goes through `escape`; numbers are formatted here, so the result is safe to
    embed in the page as Markup.
    """
    drawn = [s for s in series if s.points]
    ticks = _y_bounds(spec, drawn)
    frame = Frame(axis=axis, y_low=ticks[0], y_high=ticks[-1])
    legend, rows = _legend_svg(drawn, frame.top + frame.height + 50)
    height = int(frame.top + frame.height + 44 + rows * LEGEND_ROW)
    parts = [f'<svg class="chart" data-chart="{escape(spec.key)}" viewBox="0 0 {SVG_WIDTH} '
             f'{height}" width="{SVG_WIDTH}" height="{height}" role="img" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(spec.title)}</title>",
             f'<text class="chart-title" x="{_num(frame.left)}" y="18">{escape(spec.title)}'
             "</text>"]
    parts += _axes_svg(spec, frame, ticks)
    if not drawn:
        parts.append(f'<text class="empty" x="{_num(frame.left + frame.width / 2)}" '
                     f'y="{_num(frame.top + frame.height / 2)}" text-anchor="middle">'
                     f"{escape(spec.empty)}</text>")
    parts += [_series_svg(s, frame) for s in drawn]
    parts += legend
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece of text above is escaped


def share_bar(weights: Mapping[str, int]) -> Markup:
    """The live weights as one stacked bar of shares, in the versions' chart colours."""
    total = sum(weights.values())
    width, height = 360, 22
    parts = [f'<svg class="share-bar" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">'
             "<title>traffic shares</title>"]
    x = 0.0
    for ref, weight in weights.items():
        if total <= 0 or weight <= 0:
            continue
        w = weight / total * width
        version = int(ref) if ref.isdigit() else 0
        label = f"v{ref} {weight / total:.0%}"
        parts.append(f'<rect x="{_num(x)}" y="0" width="{_num(w)}" height="{height}" '
                     f'fill="{version_colour(version)}"><title>{escape(label)}</title></rect>')
        if w > 7 * len(label) + 6:
            parts.append(f'<text x="{_num(x + 5)}" y="15" fill="#fff">{escape(label)}</text>')
        x += w
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - text escaped above


# ---------------------------------------------------------------------------------------------
# The time window and the charts' data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The charts' time range, aligned to whole buckets so that buckets never straddle it."""

    hours: int
    axis: TimeAxis

    @property
    def since(self) -> datetime:
        return datetime.fromtimestamp(self.axis.start, UTC)

    @property
    def until(self) -> datetime:
        return datetime.fromtimestamp(self.axis.end, UTC)


def choose_window(hours: int, now: float) -> Window:
    """About TARGET_BUCKETS buckets of a round size, ending with the bucket holding `now`."""
    wanted = hours * 3600 / TARGET_BUCKETS
    step = next((b for b in BUCKET_CHOICES if b >= wanted), BUCKET_CHOICES[-1])
    end = (math.floor(now / step) + 1) * step
    start = end - math.ceil(hours * 3600 / step) * step
    return Window(hours=hours, axis=TimeAxis(start=start, end=end, step=step))


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%" if value in (0.0, 1.0) else f"{value * 100:.1f}%"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _plain(value: float) -> str:
    return f"{value:.3g}"


def _by_version(rows: Iterable[Any]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for row in rows:
        out.setdefault(row.version, []).append(row)
    return out


def _tip(version: int, start: int, axis: TimeAxis, text: str) -> str:
    return f"v{version}, {_time_label(start, axis)} UTC: {text}"


def _wilson(successes: int, n: int) -> tuple[float, float]:
    interval = stats.wilson_interval(successes, n)
    return interval if interval is not None else (0.0, 1.0)


def primary_charts(rows: list[timeseries.PrimaryBucket], axis: TimeAxis) -> list[Markup]:
    """Requests, accuracy (Wilson 95% bands), mean reward and latency p50/p95 per version."""
    half = axis.step / 2
    requests, accuracy, reward, latency = [], [], [], []
    for version, buckets in sorted(_by_version(rows).items()):
        requests.append(Series(version, f"v{version}", tuple(
            (b.start + half, b.requests,
             _tip(version, b.start, axis, f"{b.requests} requests, {b.errors} errors"))
            for b in buckets)))
        labelled = [b for b in buckets if b.labelled]
        accuracy.append(Series(version, f"v{version}", tuple(
            (b.start + half, b.correct / b.labelled,
             _tip(version, b.start, axis, f"{_pct(b.correct / b.labelled)} of {b.labelled}"))
            for b in labelled), band=tuple(
            (b.start + half, *_wilson(b.correct, b.labelled)) for b in labelled)))
        reward.append(Series(version, f"v{version}", tuple(
            (b.start + half, b.reward_sum / b.rewarded,
             _tip(version, b.start, axis, f"mean {b.reward_sum / b.rewarded:.4g} of "
                                          f"{b.rewarded}"))
            for b in buckets if b.rewarded)))
        for q, dashed in ((0.5, False), (0.95, True)):
            name = f"p{round(q * 100)}"
            latency.append(Series(version, f"v{version} {name}", tuple(
                (b.start + half, value, _tip(version, b.start, axis, f"{name} ≈ {_ms(value)}"))
                for b in buckets if (value := b.latency(q)) is not None),
                stat=name, dashed=dashed))
    return [
        line_chart(ChartSpec("requests", "Requests per bucket (primary)", "requests", _count,
                             integer=True), axis, requests),
        line_chart(ChartSpec("accuracy", "Accuracy (label feedback), 95% Wilson band",
                             "accuracy", _pct, y_range=(0.0, 1.0),
                             empty="no label feedback in this window"), axis, accuracy),
        line_chart(ChartSpec("reward", "Mean reward", "reward", _plain,
                             empty="no reward feedback in this window"), axis, reward),
        line_chart(ChartSpec("latency", "Latency p50 (solid) and p95 (dashed), estimated",
                             "ms", _plain, empty="no successful requests in this window"),
                   axis, latency),
    ]


def shadow_chart(rows: list[timeseries.ShadowBucket], axis: TimeAxis) -> Markup:
    """Per shadow version: share of requests whose label matched the primary's, with bands."""
    half = axis.step / 2
    series = []
    for version, buckets in sorted(_by_version(rows).items()):
        series.append(Series(version, f"v{version} (shadow)", tuple(
            (b.start + half, b.agreed / b.compared,
             _tip(version, b.start, axis, f"agreed on {b.agreed} of {b.compared}"))
            for b in buckets if b.compared), band=tuple(
            (b.start + half, *_wilson(b.agreed, b.compared)) for b in buckets if b.compared)))
    spec = ChartSpec("shadow", "Shadow agreement with the primary, 95% Wilson band",
                     "agreement", _pct, y_range=(0.0, 1.0),
                     empty="no shadow traffic in this window")
    return line_chart(spec, axis, series)


# ---------------------------------------------------------------------------------------------
# Page data
# ---------------------------------------------------------------------------------------------


def _when(value: str | None) -> str:
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _shares(weights: Mapping[str, int]) -> list[dict[str, Any]]:
    total = sum(weights.values())
    return [{"version": ref, "weight": w, "share": _pct(w / total) if total else "—"}
            for ref, w in weights.items()]


def _policy_view(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "revision": policy["revision"],
        "action": policy.get("action"),
        "weights": _shares(policy["weights"]),
        "shadow": [{"version": ref, "percent": p} for ref, p in policy["shadow"].items()],
        "updated_at": _when(policy.get("updated_at")),
        "updated_by": policy.get("updated_by") or "—",
        "reason": policy.get("reason") or "",
        "bar": share_bar(policy["weights"]),
    }


def _interval(pair: list[float] | None, fmt: Callable[[float], str]) -> str:
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]" if pair else ""


def _comparison_view(result: dict[str, Any]) -> dict[str, Any]:
    """The all-time comparison, formatted for a table (numbers stay exact in the API)."""
    rows = []
    for entry in result["versions"]:
        latency = entry["latency_ms"]
        accuracy, reward, versus = entry["accuracy"], entry["reward"], entry["vs_champion"]
        rows.append({
            "version": entry["version"],
            "requests": _count(entry["requests"]),
            "errors": f"{entry['errors']} ({_pct(entry['error_rate'] or 0.0)})",
            "latency": " / ".join(_ms(latency[k]) if k in latency else "—"
                                  for k in ("p50", "p95", "p99")),
            "feedback": entry["feedback"],
            "accuracy": (f"{_pct(accuracy['value'])} {_interval(accuracy['ci95'], _pct)}"
                         f" n={accuracy['n']}" if accuracy else "—"),
            "reward": (f"{reward['mean']:.4g} {_interval(reward['ci95'], _plain)} n={reward['n']}"
                       if reward else "—"),
            "versus": _versus_text(versus),
        })
    shadow = [{
        "version": item["version"], "primary_version": item["primary_version"],
        "compared": item["compared"], "errors": item["errors"],
        "agreement": (f"{_pct(item['agreement'])} {_interval(item['ci95'], _pct)}"
                      if item["agreement"] is not None else "—"),
    } for item in result["shadow"]]
    champion = result["champion"]
    return {"rows": rows, "shadow": shadow,
            "champion": (f"v{champion['version']} ({champion['source'].replace('_', ' ')})"
                         if champion else None)}


def _versus_text(versus: dict[str, Any] | None) -> str:
    if not versus:
        return "—"
    parts = []
    if versus["accuracy"]:
        parts.append(f"accuracy {versus['accuracy']['difference'] * 100:+.1f} pts, "
                     f"p={versus['accuracy']['p_value']:.3g}")
    if versus["reward"]:
        parts.append(f"reward {versus['reward']['difference']:+.4g}, "
                     f"p={versus['reward']['p_value']:.3g}")
    return "; ".join(parts) or "not enough feedback"


def _versions_view(versions: list[dict[str, Any]], policy: dict[str, Any] | None
                   ) -> list[dict[str, Any]]:
    """Versions with lineage (parent, children) worked out from the one list, no extra query."""
    weights = policy["weights"] if policy else {}
    shadow = policy["shadow"] if policy else {}
    total = sum(weights.values())
    out = []
    for v in versions:
        number = v["version"]
        dataset = v.get("dataset") or {}
        out.append({
            "version": number, "colour": version_colour(number), "stage": v["stage"],
            "aliases": v["aliases"], "sha256": v["sha256"], "sha_short": v["sha256"][:12],
            "created_at": _when(v["created_at"]), "created_by": v["created_by"],
            "description": v.get("description") or "",
            "dataset": " ".join(str(dataset[k]) for k in ("name", "version") if dataset.get(k)),
            "metrics": [f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                        for k, val in sorted((v.get("metrics") or {}).items())],
            "parent": v["parent_version"],
            "children": [c["version"] for c in versions if c["parent_version"] == number],
            "archived": v["stage"] == "archived", "archived_reason": v.get("archived_reason"),
            "share": _pct(weights[str(number)] / total) if str(number) in weights and total
            else "", "shadow": shadow.get(str(number)),
        })
    return out


@dataclass
class FormState:
    """What a policy form shows: the live policy, or what the person typed when it failed."""

    weights: dict[str, str] = field(default_factory=dict)
    shadow: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Failure:
    """A refused change to re-render: the message, and the typed values when worth keeping
    (a validation error); after a conflict the form shows the live policy instead, so that a
    stale form cannot be resubmitted with one click."""

    model: str
    message: str
    typed: FormState | None


def _form_from_policy(policy: dict[str, Any] | None) -> FormState:
    if policy is None:
        return FormState()
    return FormState(weights={k: str(v) for k, v in policy["weights"].items()},
                     shadow={k: str(v) for k, v in policy["shadow"].items()})


def _form_from_request(form: Mapping[str, str]) -> FormState:
    state = FormState(reason=form.get("reason", ""))
    for key, value in form.items():
        kind, _, ref = key.partition("-")
        if kind == "weight":
            state.weights[ref] = value
        elif kind == "shadow":
            state.shadow[ref] = value
    return state


def _form_state(policy: dict[str, Any] | None, name: str, failed: Failure | None) -> FormState:
    if failed is None or failed.model != name:
        return _form_from_policy(policy)
    state = failed.typed or _form_from_policy(policy)
    state.error = failed.message
    return state


def _model_view(svc: Services, record: dict[str, Any], window: Window,
                failed: Failure | None) -> dict[str, Any]:
    name = record["model"]
    policy_error = None
    try:
        policy: dict[str, Any] | None = svc.traffic.show(name)
    except GatewayError as exc:
        policy, policy_error = None, exc.message
    history = svc.traffic.history(name, HISTORY_LIMIT)
    primary = timeseries.primary_series(svc.db, name, window.since, window.until,
                                        window.axis.step)
    shadow = timeseries.shadow_series(svc.db, name, window.since, window.until,
                                      window.axis.step)
    return {
        "name": name,
        "versions": _versions_view(record["versions"], policy),
        "form_versions": [v["version"] for v in record["versions"] if v["stage"] != "archived"],
        "policy": _policy_view(policy) if policy and policy["revision"] else None,
        "revision": policy["revision"] if policy else 0,
        "policy_error": policy_error,
        "history": [_policy_view(h) for h in history],
        "charts": [*primary_charts(primary, window.axis), shadow_chart(shadow, window.axis)],
        "comparison": _comparison_view(compare(svc.db, name, None, None)),
        "form": _form_state(policy, name, failed),
        "drift": drift_view(name, svc.drift),
        "rollout": rollout_view(svc.db, name),
    }


# ---------------------------------------------------------------------------------------------
# Who is looking, CSRF, errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    name: str
    role: str
    via_session: bool

    @property
    def is_ops(self) -> bool:
        return self.role == "ops"


def _viewer() -> Viewer:
    """The person behind this request, as the auth hook saw them (verifications are cached).

    With GATEWAY_AUTH=off every route is open, /admin included, so the forms are too.
    """
    if not services().settings.auth:
        return Viewer(g.get("actor", "anonymous"), "ops", False)
    header = request.headers.get("Authorization")
    via_session = header is None
    if header is None:
        header = f"Bearer {session.get('token', '')}"
    record = current_app.extensions["mgw_tokens"].verify(header)
    return Viewer(record.name, record.role, via_session)


def _csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _check_csrf() -> None:
    expected = session.get("csrf")
    sent = request.form.get("csrf", "")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(),
                                                                expected.encode()):
        raise InvalidInput("the form's security token is missing or out of date; reload the "
                           "page and submit again")


def _require_ops() -> Viewer:
    viewer = _viewer()
    if not viewer.is_ops:
        raise Forbidden(f"changing traffic needs the ops role; you are signed in as "
                        f"{viewer.name} with the {viewer.role} role")
    return viewer


def _wants_html() -> bool:
    """Browsers (and HTML forms) get pages; API-style clients get the contract's JSON errors."""
    if request.method == "POST" and request.mimetype in FORM_MIMETYPES:
        return True
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _safe_next(value: str | None) -> str:
    """Only a path inside the dashboard: `next` must never send a person to another site."""
    fallback = url_for("dashboard.dashboard")
    if not value or not value.startswith("/dashboard") or "\\" in value:
        return fallback
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(c in value for c in "\r\n"):
        return fallback
    return value


def _error_page(status: int, message: str) -> Any:
    return render_template("dashboard_error.html", status=status, message=message,
                           login_url=url_for("dashboard_login.login_form")), status


@bp.errorhandler(GatewayError)
def _dashboard_error(exc: GatewayError) -> Any:
    if isinstance(exc, Unauthorized) and "token" in session:
        session.pop("token")  # revoked or unknown: the cookie is of no further use
    if not _wants_html():
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, Unauthorized) and request.method in ("GET", "HEAD"):
        target = request.full_path.rstrip("?")
        return redirect(url_for("dashboard_login.login_form", next=target), 303)
    return _error_page(exc.status, exc.message)


def _security_headers(response: Any) -> Any:
    """No caching (pages hold CSRF tokens), no framing (ops buttons), no scripts at all."""
    nonce = g.get("csp_nonce")
    styles = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {styles}; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _template_globals() -> dict[str, Any]:
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return {"csp_nonce": g.csp_nonce}


for _blueprint in (bp, login_bp):
    _blueprint.after_request(_security_headers)
    _blueprint.context_processor(_template_globals)


# ---------------------------------------------------------------------------------------------
# Routes: the page
# ---------------------------------------------------------------------------------------------


def _hours() -> int:
    hours = ascii_number(request.values.get("hours", str(DEFAULT_HOURS)).strip(), 6)
    if hours is None or not 1 <= hours <= MAX_HOURS:
        raise InvalidInput(f"hours must be a whole number from 1 to {MAX_HOURS}")
    return hours


def _page_url(model: str | None, hours: int) -> str:
    anchor = f"#model-{model}" if model else ""
    return url_for("dashboard.dashboard", model=model, hours=hours) + anchor


def render_page(status: int = 200, only: str | None = None, error: str | None = None,
                failed: Failure | None = None) -> Any:
    """The whole page; also what a failed form re-renders, with the message and its status."""
    svc = services()
    viewer = _viewer()
    hours = _hours()
    if only is not None:
        check_model_name(only)
    window = choose_window(hours, time.time())
    records = service.list_models(svc.db)
    names = [r["model"] for r in records]
    if only is not None:
        records = [r for r in records if r["model"] == only]
        if not records and error is None:
            status, error = 404, f"model {only!r} is not registered"
    models = [_model_view(svc, r, window, failed) for r in records]
    page = render_template(
        "dashboard.html", models=models, names=names, only=only, hours=hours,
        hour_choices=HOUR_CHOICES, bucket=_duration(window.axis.step), viewer=viewer,
        csrf=_csrf_token(), error=error, auth=svc.settings.auth,
        since=_when(window.since.isoformat()), until=_when(window.until.isoformat()),
    )
    return page, status


@bp.get("/dashboard")
def dashboard() -> Any:
    return render_page(only=request.args.get("model") or None)


# ---------------------------------------------------------------------------------------------
# Routes: ops actions
# ---------------------------------------------------------------------------------------------


def _form_number(text: str) -> Any:
    """A typed number as JSON would carry it; anything else is passed on unchanged, so the
    API's own validation produces the same message as for a bad PUT."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def policy_body(form: Mapping[str, str]) -> dict[str, Any]:
    """`weight-<v>` and `shadow-<v>` fields to the API's PUT body; empty fields are left out."""
    body: dict[str, Any] = {"weights": {}, "shadow": {}}
    for key, raw in form.items():
        kind, _, ref = key.partition("-")
        value = raw.strip()
        if kind in ("weight", "shadow") and ref and value:
            body["weights" if kind == "weight" else "shadow"][ref] = _form_number(value)
    reason = form.get("reason", "").strip()
    if reason:
        body["reason"] = reason
    return body


def _reason() -> str | None:
    return check_reason(request.form.get("reason", "").strip() or None)


def _stale(name: str, exc: GatewayError, if_match: int | None) -> str | None:
    """For a conflict caused by a change made while the page was open, say so plainly."""
    if not isinstance(exc, Conflict) or if_match is None:
        return None
    try:
        live = services().traffic.show(name)["revision"]
    except GatewayError:
        return None
    if live == if_match:
        return None
    return (f"Not applied: the policy changed while this page was open (it is now at revision "
            f"{live}; the page showed {if_match}). The page now shows the live policy; check "
            "it and submit again.")


def _failure(name: str, exc: GatewayError, if_match: int | None, policy_form: bool) -> Any:
    """Re-render the page after a refused change, with the message and the refusal's status."""
    message = _stale(name, exc, if_match) or exc.message
    keep = policy_form and not isinstance(exc, Conflict)
    typed = _form_from_request(request.form) if keep else None
    return render_page(exc.status, only=name, error=f"{name}: {message}",
                       failed=Failure(name, message, typed))


@bp.post("/dashboard/models/<name>/traffic")
def set_traffic(name: str) -> Any:
    _require_ops()
    _check_csrf()
    hours = _hours()
    if_match = parse_if_match(request.form.get("revision") or None)
    try:
        policy = services().traffic.set(name, policy_body(request.form), g.actor, if_match)
    except GatewayError as exc:
        return _failure(name, exc, if_match, policy_form=True)
    flash(f"{name}: revision {policy['revision']} is live.")
    return redirect(_page_url(name, hours), 303)


@bp.post("/dashboard/models/<name>/rollback")
def rollback(name: str) -> Any:
    _require_ops()
    _check_csrf()
    hours = _hours()
    if_match = parse_if_match(request.form.get("revision") or None)
    try:
        policy = services().traffic.rollback(name, g.actor, _reason(), if_match)
    except GatewayError as exc:
        return _failure(name, exc, if_match, policy_form=False)
    flash(f"{name}: rolled back; revision {policy['revision']} is live.")
    return redirect(_page_url(name, hours), 303)


# ---------------------------------------------------------------------------------------------
# Routes: login and logout (public blueprint `dashboard_login`)
# ---------------------------------------------------------------------------------------------


def _login_page(status: int = 200, error: str | None = None) -> Any:
    target = _safe_next(request.values.get("next"))
    return render_template("dashboard_login.html", error=error, next=target,
                           csrf=_csrf_token()), status


@login_bp.get("/dashboard/login")
def login_form() -> Any:
    return _login_page()


@login_bp.post("/dashboard/login")
def login() -> Any:
    """Check the pasted token like the auth hook would, then keep it in the session cookie."""
    try:
        _check_csrf()
    except InvalidInput as exc:
        return _login_page(400, exc.message)
    token = request.form.get("token", "").strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        return _login_page(401, "paste a token (gateway token create --role analyst)")
    try:
        record = current_app.extensions["mgw_tokens"].verify(f"Bearer {token}")
    except GatewayError as exc:
        return _login_page(exc.status, exc.message)
    if record.role not in DASHBOARD_ROLES:
        return _login_page(403, f"the dashboard needs an analyst or ops token; this one has "
                                f"the {record.role} role")
    target = _safe_next(request.form.get("next"))
    session.clear()  # a fresh session: nothing from before the login carries over
    session["token"] = token
    session["csrf"] = secrets.token_urlsafe(32)
    return redirect(target, 303)


@login_bp.post("/dashboard/logout")
def logout() -> Any:
    try:
        _check_csrf()
    except InvalidInput as exc:
        return _error_page(400, exc.message)
    session.clear()
    return redirect(url_for("dashboard_login.login_form"), 303)
