"""The lineage graph's layout and SVG (gateway.web.dashboard.lineage), and on the dashboard."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from gateway.web.dashboard.lineage import NODE_W, layout, lineage_svg

SVG = "{http://www.w3.org/2000/svg}"


def version(number, parent=None, **extra):
    return {"version": number, "parent": parent, "stage": extra.get("stage", "live"),
            "aliases": extra.get("aliases", []), "share": extra.get("share", ""),
            "shadow": extra.get("shadow"), "colour": "#4e79a7",
            "params": extra.get("params", {})}


def test_generations_are_columns_and_families_stay_together():
    versions = [version(1), version(2, 1), version(3, 1), version(4, 3), version(5),
                version(6, 99)]  # 6's parent is not listed: it starts a family of its own
    places = layout(versions)
    assert places == {1: (0, 0), 2: (1, 0), 3: (1, 1), 4: (2, 1), 5: (0, 2), 6: (0, 3)}


def test_nodes_carry_stage_aliases_and_traffic_and_edges_say_how():
    versions = [version(1, aliases=["champion"], share="90%"),
                version(2, 1, shadow=100),
                version(3, 1, share="10%", aliases=["<challenger>"]),
                version(4, 3, stage="archived", params={"quantization": {"method": "dynamic"}})]
    svg = str(lineage_svg(versions))
    root = ET.fromstring(svg)  # well-formed, the alias escaped
    nodes = {g.get("data-version"): "".join(g.itertext()) for g in root.iter(f"{SVG}g")
             if g.get("class", "").startswith("node")}
    assert set(nodes) == {"1", "2", "3", "4"}
    assert "champion" in nodes["1"] and "90% of traffic" in nodes["1"]
    assert "shadow 100%" in nodes["2"] and "no alias" in nodes["2"]
    assert "<challenger>" in nodes["3"] and "&lt;challenger&gt;" in svg
    assert "archived" in nodes["4"] and "no traffic" in nodes["4"]
    edges = {(g.get("data-parent"), g.get("data-child"), g.get("data-relation"))
             for g in root.iter(f"{SVG}g") if g.get("class") == "edge"}
    assert edges == {("1", "2", "retrained"), ("1", "3", "retrained"), ("3", "4", "quantized")}
    assert int(root.get("width")) >= 3 * NODE_W  # three generations side by side


def test_no_versions_draws_nothing():
    assert str(lineage_svg([])) == ""


def test_the_dashboard_shows_the_graph(client, digits, role_tokens):
    page = client.get("/dashboard?model=digits",
                      headers={"Authorization": f"Bearer {role_tokens['analyst']}"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<svg class="lineage"' in html
    for number in (1, 2, 3):
        assert f'data-version="{number}"' in html
