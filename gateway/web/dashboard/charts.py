"""The dashboard's charts: SVG line charts and the traffic bar drawn on the server (nothing is
fetched from the internet), the time window, and the per-version series the charts plot."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from gateway.outcomes import stats
from registry import timeseries

TARGET_BUCKETS = 24
BUCKET_CHOICES = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                  172800, 259200, 604800)

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
                 f'{escape(fmt_duration(axis.step))} buckets</text>')
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


def fmt_duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def fmt_pct(value: float) -> str:
    return f"{value * 100:.0f}%" if value in (0.0, 1.0) else f"{value * 100:.1f}%"


def fmt_ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"


def fmt_count(value: float) -> str:
    return f"{value:,.0f}"


def fmt_plain(value: float) -> str:
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
             _tip(version, b.start, axis, f"{fmt_pct(b.correct / b.labelled)} of {b.labelled}"))
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
                (b.start + half, value, _tip(version, b.start, axis, f"{name} ≈ {fmt_ms(value)}"))
                for b in buckets if (value := b.latency(q)) is not None),
                stat=name, dashed=dashed))
    return [
        line_chart(ChartSpec("requests", "Requests per bucket (primary)", "requests", fmt_count,
                             integer=True), axis, requests),
        line_chart(ChartSpec("accuracy", "Accuracy (label feedback), 95% Wilson band",
                             "accuracy", fmt_pct, y_range=(0.0, 1.0),
                             empty="no label feedback in this window"), axis, accuracy),
        line_chart(ChartSpec("reward", "Mean reward", "reward", fmt_plain,
                             empty="no reward feedback in this window"), axis, reward),
        line_chart(ChartSpec("latency", "Latency p50 (solid) and p95 (dashed), estimated",
                             "ms", fmt_plain, empty="no successful requests in this window"),
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
                     "agreement", fmt_pct, y_range=(0.0, 1.0),
                     empty="no shadow traffic in this window")
    return line_chart(spec, axis, series)
