"""The house stays easy to see: packages import each other without cycles, and no module grows unchecked.

Packages are ``pipeline`` (its top-level modules: settings, clock, database, errors, keys, holders), each
``pipeline.<pkg>`` sub-package, and ``subscribers``. They form layers, bottom to top:

    pipeline (core) < mail < subscribers < content < import < staff < review < rendering < delivery < bounces
    < privacy < corrections < site < web < scheduling < ops < console

(the order of the README's pipeline table)

A stage's command module (``cli.py`` or ``*_cli.py``, beside its stage) belongs to the command layer on top of all
of them: ``newsletter send`` needs the day's plan (scheduling) as much as the send loop (delivery). So command
modules may import any package, and nothing but another command module imports one.

Every ``import`` is counted, including those inside functions: a cycle hidden in a function body is still a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_ROOTS = ("pipeline", "subscribers")


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES_ROOTS:
        return None
    if parts[0] == "subscribers":
        return "subscribers"
    if len(parts) >= 2 and (ROOT / "pipeline" / parts[1]).is_dir() and parts[1] != "migrations":
        return f"pipeline.{parts[1]}"
    return "pipeline"


def is_command(module: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return leaf == "cli" or leaf.endswith("_cli") or module == "pipeline.settings_doc"


def _modules():
    for root in PACKAGES_ROOTS:
        for path in (ROOT / root).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            if "migrations" in rel.parts:
                continue
            name = ".".join(rel.parts).removesuffix(".__init__")
            yield name, path


def package_graph() -> dict[str, dict[str, set[str]]]:
    """{package: {imported package: {"module -> module", ...}}}."""
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in _modules():
        here = _package_of(name)
        if is_command(name):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                there = _package_of(target)
                if there is None or there == here:
                    continue
                if target.count(".") and there != _package_of(target.rsplit(".", 1)[0]) and target != there:
                    continue
                graph.setdefault(here, {}).setdefault(there, set()).add(f"{name} -> {target}")
    return graph


def _cycle(graph) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_between_packages():
    graph = package_graph()
    assert len(graph) >= 5  # the walk found the packages at all
    cycle = _cycle(graph)
    if cycle:
        edges = [sorted(graph[a][b])[:3] for a, b in zip(cycle, cycle[1:])]
        raise AssertionError(f"import cycle {' -> '.join(cycle)}: {edges}")


def test_only_commands_import_commands():
    offenders = []
    for name, path in _modules():
        if is_command(name):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{name} -> {t}" for t in targets
                          if t.split(".")[0] in PACKAGES_ROOTS and is_command(t) and (ROOT / (t.replace(".", "/") + ".py")).exists()]
    assert not offenders, offenders


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": set()}, "b": {}}) is None
