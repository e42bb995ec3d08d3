"""The layers contract: imports between the project's top-level packages point down only, and no module cycles.

The layers, top to bottom (docs/architecture.md says why)::

    recsys                              the command line and its commands
    serving                             gateway, model server, serving-path evaluation
    model | spark_jobs | flink_jobs     the planes: independent of each other
    pipeline                            the shared core: config, keys, features, store, events

A module may import its own package or any package in a lower layer; packages in
the same layer do not import each other. Every import counts, also those inside
functions (a lazy import hides a dependency from a reader, not from this test).
The module graph of the whole project must have no cycle either.

The check reads the source with ``ast`` (nothing is imported), so it runs in
milliseconds and an upward import fails ``make test`` with the file, line and rule.
``bench/`` and ``tests/`` sit outside the layers and may use any package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[tuple[str, ...]] = [("recsys",), ("serving",), ("model", "spark_jobs", "flink_jobs"), ("pipeline",)]
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages."""
    out = {}
    for pkg in LAYER_OF:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in the file, nested ones included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule when there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target:
                found.append((target, node.lineno))
    return list(dict.fromkeys(found))


def _graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _violations(graph: dict[str, list[tuple[str, int]]], files: dict[str, Path]) -> list[str]:
    wrong = []
    for name, imports in graph.items():
        src = name.split(".")[0]
        for target, line in imports:
            dst = target.split(".")[0]
            if dst == src:
                continue
            where = f"{files[name].relative_to(ROOT) if files[name].is_relative_to(ROOT) else files[name]}:{line}"
            if LAYER_OF[dst] < LAYER_OF[src]:
                wrong.append(f"{where} imports {target}: {dst} is above {src}")
            elif LAYER_OF[dst] == LAYER_OF[src]:
                wrong.append(f"{where} imports {target}: {src} and {dst} are independent planes")
    return wrong


def test_imports_point_down_only() -> None:
    modules, graph = _graph()
    wrong = _violations(graph, modules)
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycles() -> None:
    _, graph = _graph()
    # a package's __init__ re-exporting its submodules is not a cycle with them
    edges = {name: sorted({t for t, _ in imports if t != name and not _is_parent_package(name, t)})
             for name, imports in graph.items()}
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_check_sees_lazy_relative_and_upward_imports(tmp_path: Path) -> None:
    """The reader itself: a lazy import, a relative one, an upward one and a cycle are all caught."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from serving.gateway import Gateway\n\nfrom . import other\nimport model.x.y\n")
    modules = {"serving.gateway": path, "pipeline.mod": path, "pipeline.other": path, "model.x": path}
    found = _imports("pipeline.mod", path, modules)
    assert sorted(found) == [("model.x", 5), ("pipeline.other", 4), ("serving.gateway", 2)]
    wrong = _violations({"pipeline.mod": found}, modules)
    assert sorted(w.split(": ", 1)[1] for w in wrong) == ["model is above pipeline", "serving is above pipeline"]
    assert _violations({"flink_jobs.a": [("spark_jobs.b", 1)]}, {"flink_jobs.a": path}) == \
        [f"{path}:1 imports spark_jobs.b: flink_jobs and spark_jobs are independent planes"]
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
