"""Architecture checks over the product packages' source: no import circle, the protocol is spelled once
(in ``fedge_protocol``), and ``fedge_protocol`` needs nothing but pydantic and the standard library.

The import graph is read from the source with ``ast`` (function-level "lazy" imports count, imports
under ``if TYPE_CHECKING:`` do not: they never run), so a circle hidden behind a lazy import is caught.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("controller", "edge_agent", "fedge_protocol", "simulator", "fedge_common")

# Strings that belong to the controller<->device contract: each may appear only in fedge_protocol.
PROTOCOL_LITERALS = (
    "fedge.desired-state",
    "fedge.command",
    "fedge-desired-state-v1",
    "fedge-command-v1",
    "fedge/devices",
    "failed-rolled-back",
    "failed-unable-to-rollback",
    "fedge:device-api",
    "/desired-state",
    "/commands/pending",
)
PROTOCOL_DEFS = ("device_topic", "split_device_topic", "device_may", "canonical_json")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PRODUCT:
        base = ROOT / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if "migrations" in path.parts:
                continue  # Alembic scripts are loaded by Alembic, not imported
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    tree: ast.AST, module: str, is_package: bool, known: set[str] | dict[str, Path] | None = None
) -> Iterator[str]:
    """Every module name imported at run time (absolute; relative imports resolved). With ``known``
    module names, ``from pkg import sub`` counts as importing ``pkg.sub`` alone when ``sub`` is a module
    (the package itself is already initialised when one of its modules runs)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            names = [f"{name}.{alias.name}" for alias in node.names]
            # ``from pkg import submodule`` imports the submodule; ``pkg`` itself only for other names
            if known is None or not all(n in known for n in names):
                yield name
            yield from names
        stack.extend(ast.iter_child_nodes(node))


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for imported in _imports(tree, name, path.name == "__init__.py", modules):
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_product_packages_have_no_import_circle() -> None:
    graph = _graph()
    assert len(graph) > 100  # the whole product was read
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_lazy_circle() -> None:
    tree = ast.parse("def f():\n    from a.b import c\n")
    imported = set(_imports(tree, "x.y", False))
    assert {"a.b", "a.b.c"} <= imported
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _string_constants(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            yield node.lineno, node.value.decode("latin-1")


def test_protocol_strings_and_helpers_are_defined_only_in_fedge_protocol() -> None:
    spelled: list[str] = []
    defined: list[str] = []
    for name, path in _modules().items():
        if name.startswith("fedge_protocol"):
            continue
        for line, value in _string_constants(path):
            spelled += [f"{name}:{line}: {lit!r}" for lit in PROTOCOL_LITERALS if lit in value]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in PROTOCOL_DEFS:
                defined.append(f"{name}:{node.lineno}: def {node.name}")
    assert spelled == []
    assert defined == []


def test_the_protocol_itself_spells_every_literal() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "fedge_protocol").glob("*.py"))
    assert [lit for lit in PROTOCOL_LITERALS if lit not in text] == []


def test_fedge_protocol_needs_only_pydantic_and_the_standard_library() -> None:
    outside = set()
    for name, path in _modules().items():
        if not name.startswith("fedge_protocol"):
            continue
        for imported in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            top = imported.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("pydantic", "fedge_protocol", "__future__"):
                outside.add(imported)
    assert outside == set()


def test_fedge_protocol_imports_in_a_fresh_interpreter_without_the_product() -> None:
    code = (
        "import sys, fedge_protocol\n"
        "heavy = [m for m in ('controller', 'edge_agent', 'fastapi', 'cryptography', 'httpx') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(fedge_protocol.device_topic('d', fedge_protocol.Leaf.DESIRED))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fedge/devices/d/desired"
