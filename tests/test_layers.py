"""The layout's rules, read from the source with `ast` (no import is executed).

- No import cycle among the modules of `gateway/` and `registry/`, counting imports inside
  functions too: a deferred import hides a cycle from Python, not from a reader.
- `registry` never imports `gateway`: the registry is the storage layer under everything.
- The planes below the HTTP layer (`serving`, `traffic`, `outcomes`, `lifecycle`) never import
  the control plane's web app or the command line (`web`, `cli`).
- Only `wsgi.py` (and gunicorn, by name) import the app factory module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "registry")
LOWER_PLANES = ("gateway.serving", "gateway.traffic", "gateway.outcomes", "gateway.lifecycle")
UPPER = ("gateway.web", "gateway.cli")
APP_MODULE = "gateway.web.app"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The project modules `path` imports, anywhere in the file (`from a import b` counts as
    `a.b` when that is a module, else as `a`)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (root / package).rglob("*.py")
             if "migrations" not in p.parts]
    modules = {module_name(p, root) for p in files}
    graph = {module_name(p, root): imports_of(p, modules, root) for p in files}
    # a package's __init__ is imported with each of its modules: not an edge of its own here
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def crossings(graph: dict[str, set[str]], sources: tuple[str, ...],
              targets: tuple[str, ...]) -> list[str]:
    def under(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return sorted(f"{m} -> {t}" for m, ts in graph.items() if under(m, sources)
                  for t in ts if under(t, targets))


def test_no_import_cycles_in_gateway_and_registry():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_registry_never_imports_gateway():
    bad = crossings(import_graph(), ("registry",), ("gateway",))
    assert not bad, "registry imports gateway:\n" + "\n".join(bad)


def test_the_planes_below_http_import_neither_web_nor_cli():
    bad = crossings(import_graph(), LOWER_PLANES, UPPER)
    assert not bad, "a lower plane imports web or cli:\n" + "\n".join(bad)


def test_only_wsgi_imports_the_app_factory_module():
    graph = import_graph()
    importers = sorted(m for m, targets in graph.items() if APP_MODULE in targets)
    assert not importers, f"{APP_MODULE} is imported by {importers}"
    wsgi = imports_of(ROOT / "wsgi.py", set(graph))
    assert APP_MODULE in wsgi


def test_the_checker_sees_a_cycle_and_a_crossing(tmp_path):
    """The rules above could pass by never finding anything: a small tree proves they bite."""
    package = tmp_path / "gateway"
    (package / "serving").mkdir(parents=True)
    (package / "web").mkdir()
    (tmp_path / "registry").mkdir()
    for init in (package, package / "serving", package / "web", tmp_path / "registry"):
        (init / "__init__.py").write_text("")
    (package / "serving" / "a.py").write_text("from gateway.serving import b\n")
    (package / "serving" / "b.py").write_text(
        "def later():\n    from gateway.serving.a import x\n    from ..web import app\n")
    (package / "web" / "app.py").write_text("")
    (tmp_path / "registry" / "r.py").write_text("import gateway.serving.a\n")
    graph = import_graph(tmp_path)
    assert find_cycles(graph) == [["gateway.serving.a", "gateway.serving.b"]]
    assert crossings(graph, LOWER_PLANES, UPPER) == ["gateway.serving.b -> gateway.web.app"]
    assert crossings(graph, ("registry",), ("gateway",)) == ["registry.r -> gateway.serving.a"]
