"""A model's lineage as a graph: versions as nodes, parent -> child edges, drawn server-side as
SVG like the other charts (no script), from the versions the page already has.

Columns are generations (a version whose parent is unknown or absent starts one); within a
column versions follow their parents, so a family stays together. Each node carries what ops
look for first: the stage, the aliases and the live traffic (weight share and shadow).
An edge says how the child came from its parent: `quantized` when the child records a
quantization, else `retrained`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

NODE_W, NODE_H = 178, 62
COL_GAP, ROW_GAP = 64, 14
PAD = 10


def _relation(version: Mapping[str, Any]) -> str:
    params = version.get("params") or {}
    return "quantized" if isinstance(params, dict) and "quantization" in params else "retrained"


def layout(versions: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    """version -> (generation, row): depth-first from each root, children in version order."""
    numbers = {v["version"] for v in versions}
    children: dict[int | None, list[int]] = {}
    for v in sorted(versions, key=lambda item: item["version"]):
        parent = v.get("parent")
        children.setdefault(parent if parent in numbers else None, []).append(v["version"])
    placed: dict[int, tuple[int, int]] = {}
    row = 0

    def visit(number: int, depth: int) -> None:
        nonlocal row
        if number in placed:  # a cycle cannot be registered, but never loop on bad data
            return
        placed[number] = (depth, row)
        kids = children.get(number, [])
        if not kids:
            row += 1
        for kid in kids:
            visit(kid, depth + 1)

    for root in children.get(None, []):
        visit(root, 0)
    for v in versions:  # anything left (only on inconsistent data) goes last, unlinked
        if v["version"] not in placed:
            placed[v["version"]] = (0, row)
            row += 1
    return placed


def lineage_svg(versions: Sequence[Mapping[str, Any]]) -> Markup:
    """The graph for the dashboard's versions view (`version`, `parent`, `stage`, `aliases`,
    `share`, `shadow`, `colour`, and `params` for the edge's kind)."""
    if not versions:
        return Markup("")
    places = layout(versions)
    by_number = {v["version"]: v for v in versions}
    columns = max(depth for depth, _ in places.values()) + 1
    rows = max(row for _, row in places.values()) + 1
    width = PAD * 2 + columns * NODE_W + (columns - 1) * COL_GAP
    height = PAD * 2 + rows * NODE_H + (rows - 1) * ROW_GAP

    def corner(number: int) -> tuple[float, float]:
        depth, row = places[number]
        return PAD + depth * (NODE_W + COL_GAP), PAD + row * (NODE_H + ROW_GAP)

    parts = [f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">'
             "<title>version lineage</title>",
             '<defs><marker id="lineage-arrow" viewBox="0 0 8 8" refX="8" refY="4" '
             'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" '
             'fill="#888"/></marker></defs>']
    for v in versions:
        parent = v.get("parent")
        if not isinstance(parent, int) or parent not in by_number:
            continue
        px, py = corner(parent)
        cx, cy = corner(v["version"])
        x1, y1 = px + NODE_W, py + NODE_H / 2
        x2, y2 = cx, cy + NODE_H / 2
        mid = (x1 + x2) / 2
        relation = _relation(v)
        parts.append(
            f'<g class="edge" data-parent="{parent}" data-child="{v["version"]}" '
            f'data-relation="{relation}"><path d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} '
            f'{mid:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}" fill="none" stroke="#888" '
            f'stroke-width="1.5" marker-end="url(#lineage-arrow)"/>'
            f'<text x="{mid:.0f}" y="{(y1 + y2) / 2 - 4:.0f}" text-anchor="middle" '
            f'font-size="10" fill="#666">{relation}</text></g>')
    for v in versions:
        x, y = corner(v["version"])
        archived = v.get("stage") == "archived"
        traffic = []
        if v.get("share"):
            traffic.append(f"{v['share']} of traffic")
        if v.get("shadow") is not None:
            traffic.append(f"shadow {v['shadow']}%")
        aliases = ", ".join(v.get("aliases") or []) or "no alias"
        parts.append(
            f'<g class="node{" archived" if archived else ""}" data-version="{v["version"]}" '
            f'data-stage="{escape(v.get("stage", ""))}">'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'fill="{"#f4f4f4" if archived else "#fff"}" stroke="{v["colour"]}" '
            f'stroke-width="{1 if archived else 2}"/>'
            f'<rect x="{x}" y="{y}" width="6" height="{NODE_H}" rx="2" fill="{v["colour"]}"/>'
            f'<text x="{x + 14}" y="{y + 18}" font-size="13" font-weight="bold">'
            f'v{v["version"]} <tspan font-weight="normal" font-size="11" fill="#555">'
            f'{escape(v.get("stage", ""))}</tspan></text>'
            f'<text x="{x + 14}" y="{y + 35}" font-size="11" fill="#333">'
            f'{escape(aliases)}</text>'
            f'<text x="{x + 14}" y="{y + 52}" font-size="11" fill="#333">'
            f'{escape(" · ".join(traffic) or "no traffic")}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text escaped above
