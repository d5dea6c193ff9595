"""One shape for every service, checked on the source tree (no service is started).

* no import cycles between the modules of the libraries and services (every import counts:
  module level, inside functions and under `TYPE_CHECKING`);
* no private name (`_name`) imported from another module, nor read off an imported module
  (`module._name`), anywhere in the tree;
* every service carries a typed state object: each builder of a `Service` names its state type
  (`Service[Settings, State]`) and no code reads or writes `service.state[...]`;
* a builder is wiring only: at most `MAX_BUILDER_LINES` lines.

Exceptions are named below, each with the work that removes it (other issues in progress).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC_ROOTS = sorted([*REPO.glob("libs/*/src"), *REPO.glob("services/*/src")])
CODE = [
    path
    for pattern in (
        "libs/*/src/**/*.py",
        "libs/*/tests/**/*.py",
        "services/*/src/**/*.py",
        "services/*/tests/**/*.py",
        "tests/**/*.py",
        "bench/**/*.py",
    )
    for path in sorted(REPO.glob(pattern))
]

# (file relative to the repository, imported name): being removed elsewhere; drop an entry once
# its fix has landed
PRIVATE_IMPORT_EXCEPTIONS: set[tuple[str, str]] = set()

# (file relative to the repository, builder function): dict state being replaced elsewhere;
# drop an entry once its fix has landed
UNTYPED_STATE_EXCEPTIONS: set[tuple[str, str]] = set()
# files indexing a dict state: the builders above and their tests
STATE_SUBSCRIPT_EXCEPTIONS = {path for path, _ in UNTYPED_STATE_EXCEPTIONS}


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A file's syntax tree (each file is parsed once per run)."""
    return ast.parse(path.read_text())


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def project_modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the libraries and services."""
    modules = {}
    for root in SRC_ROOTS:
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def imported_modules(name: str, path: Path) -> Iterator[tuple[ast.AST, str, str | None]]:
    """(node, project module imported, name taken from it or None) for each import in a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield node, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    yield node, f"{base}.{alias.name}", None
                elif base in MODULES:
                    yield node, base, alias.name


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan; the module graph is a few hundred nodes deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["e"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = {
        name: {module for _, module, _ in imported_modules(name, path)}
        for name, path in MODULES.items()
    }
    assert len(graph) > 100, "the scan found the libraries and services"
    assert import_cycles(graph) == []


def private_imports(path: Path) -> Iterator[str]:
    """Private names a file imports from another module or reads off an imported module."""
    tree = parsed(path)
    module_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield alias.name
                if f"{node.module}.{alias.name}" in MODULES:
                    module_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    module_aliases.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            yield f"{node.value.id}.{node.attr}"


def test_the_private_import_scan_sees_both_forms(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from edge_simulator import noise\nfrom x.y import _z, public\nnoise._hidden\nnoise.ok\n"
    )
    assert sorted(private_imports(path)) == ["_z", "noise._hidden"]


def test_no_private_names_imported_across_modules() -> None:
    found = {(_rel(path), name) for path in CODE for name in private_imports(path)}
    assert len(CODE) > 300
    assert found - PRIVATE_IMPORT_EXCEPTIONS == set()


def service_builders(path: Path) -> Iterator[tuple[str, int]]:
    """(function, number of type arguments) for each function returning `Service[...]`."""
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            returns = node.returns
            if (
                isinstance(returns, ast.Subscript)
                and isinstance(returns.value, ast.Name)
                and returns.value.id == "Service"
            ):
                args = returns.slice
                yield node.name, len(args.elts) if isinstance(args, ast.Tuple) else 1


def state_subscripts(path: Path) -> int:
    """How often a file indexes (or `.get`s from) an attribute named `state` (a dict state)."""
    count = 0
    for node in ast.walk(parsed(path)):
        target = None
        if isinstance(node, ast.Subscript):
            target = node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
        ):
            target = node.func.value
        count += isinstance(target, ast.Attribute) and target.attr == "state"
    return count


def test_the_state_scan_sees_indexing(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text('service.state["x"] = 1\nrig.service.state.get("y")\nservice.state.last\n')
    assert state_subscripts(path) == 2


@pytest.mark.parametrize("service", sorted(p.name for p in (REPO / "services").iterdir()))
def test_every_service_builds_typed_state(service: str) -> None:
    builders = [
        (_rel(path), name, n_args)
        for path in sorted((REPO / "services" / service / "src").rglob("*.py"))
        for name, n_args in service_builders(path)
    ]
    assert builders, f"services/{service} has no function returning Service[...]"
    untyped = {(path, name) for path, name, n in builders if n < 2}
    assert untyped - UNTYPED_STATE_EXCEPTIONS == set(), "give the builder Service[Settings, State]"


def test_no_code_indexes_service_state() -> None:
    found = {_rel(path) for path in CODE if state_subscripts(path)}
    assert found - STATE_SUBSCRIPT_EXCEPTIONS == set(), "read the typed state's attributes"


MAX_BUILDER_LINES = 100
"""A builder wires (handlers of a line or two, routes, tasks); the logic lives in its state."""


def long_builders(path: Path) -> Iterator[tuple[str, int]]:
    """(builder, its length in lines) for each builder of a `Service` longer than the bound."""
    builders = {name for name, _ in service_builders(path)}
    for node in ast.walk(parsed(path)):
        if (
            isinstance(node, ast.FunctionDef)
            and node.name in builders
            and node.end_lineno is not None
            and node.end_lineno - node.lineno + 1 > MAX_BUILDER_LINES
        ):
            yield node.name, node.end_lineno - node.lineno + 1


def test_the_builder_length_scan_sees_a_long_builder(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    body = "    x = 1\n" * (MAX_BUILDER_LINES - 2)
    path.write_text(
        f"def short(s: S) -> Service[S, St]:\n{body}    return x\n\n\n"
        f"def long(s: S) -> Service[S, St]:\n{body}    x = 2\n    return x\n\n\n"
        f"def other(s: S) -> int:\n{body * 2}    return x\n"
    )
    assert list(long_builders(path)) == [("long", MAX_BUILDER_LINES + 1)]


def test_service_builders_are_wiring_only() -> None:
    long = {
        (_rel(path), name): n_lines
        for path in sorted(REPO.glob("services/*/src/**/*.py"))
        for name, n_lines in long_builders(path)
    }
    assert long == {}, "move the builder's logic into its state object"
