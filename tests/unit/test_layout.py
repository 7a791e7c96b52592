"""The layout shows the architecture: one-way imports, and each outside concern in one place.

Read from the source with ``ast``, so a new import that breaks a rule fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "logbook"
MODULES = {
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in PACKAGE.rglob("*.py")
}


def _imports(name: str, path: Path) -> set[str]:
    """Modules imported by ``name``, absolute, at any depth (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    """What ``name`` imports of logbook: its own parent package included (no exemption)."""
    return {m for m in IMPORTS[name] if m in MODULES and m != name}


def test_no_import_circles() -> None:
    graph = {name: _internal(name) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(
                    "import circle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt])
                )
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize(
    "library, allowed",
    [
        ("click", ("logbook.cli",)),
        ("sqlite3", ("logbook.store",)),
        ("sqlite_utils", ("logbook.store",)),
        ("watchdog", ("logbook.watch.observer",)),
        ("httpx2", ("logbook.client",)),
        ("aiohttp", ("logbook.client", "logbook.server", "logbook.emulator", "logbook.relay")),
        # HTTP from the standard library: the client (proxy variables) and the emulator's test
        # handle (no dependencies)
        ("urllib.request", ("logbook.client", "logbook.emulator.testing")),
        ("http.client", ()),
        ("requests", ()),
    ],
)
def test_each_outside_concern_lives_in_one_place(library: str, allowed: tuple[str, ...]) -> None:
    users = sorted(
        name for name, mods in IMPORTS.items()
        if any(m == library or m.startswith(library + ".") for m in mods)
    )  # fmt: skip
    stray = [u for u in users if not any(u == a or u.startswith(a + ".") for a in allowed)]
    assert not stray, f"{library} is imported outside {allowed}: {stray}"


def test_only_the_cli_prints_or_exits() -> None:
    """The library raises; ``cli`` (and the servers' own command lines) print and exit."""
    allowed = (
        "logbook.cli",
        "logbook.emulator.server",
        "logbook.emulator.__main__",
        "logbook.__main__",
    )
    for name, path in MODULES.items():
        if name in allowed or name.startswith("logbook.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("print", "exit"), f"{name} calls {node.func.id}()"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                assert (
                    target not in ("sys.exit", "os._exit") or name == "logbook.ingest.parallel"
                ), f"{name} calls {target}()"


def test_no_class_over_300_lines_and_no_function_over_60() -> None:
    too_big = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                limit = 300 if isinstance(node, ast.ClassDef) else 60
                if size > limit:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    assert not too_big, too_big


def test_docstrings_cite_nothing_outside_the_repository() -> None:
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        for ghost in ("FINDINGS.md", "DESIGN.md", "../shared", "sync_engine"):
            assert ghost not in text, f"{name} cites {ghost}"
        for doc in re.findall(r"[\w./-]+\.md\b", text):  # any document cited must be ours
            assert any((REPO_ROOT / d / doc).exists() for d in ("", "docs")), f"{name}: {doc}"


#: The layers README's architecture section draws, top to bottom: a module imports only
#: from layers below its own (and from inside its own package).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli", "logbook"),
    ("api", "watch", "relay", "doctor", "emulator"),
    ("engine", "importer", "monitor", "bundle"),
    ("readiness",),
    ("client", "store", "ingest", "server"),
    ("models", "progress", "fsinfo", "health"),
    ("jobs", "config"),
    ("errors", "vocab", "redact", "notify"),
)


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else name


def test_imports_point_down_the_layers() -> None:
    layer = {mod: depth for depth, mods in enumerate(LAYERS) for mod in mods}
    tops = {_top(name) for name in MODULES}
    assert tops <= set(layer), f"modules with no layer: {sorted(tops - set(layer))}"
    upward = sorted(
        f"{name} -> {dep}"
        for name in MODULES
        for dep in _internal(name)
        if _top(name) != _top(dep) and layer[_top(dep)] <= layer[_top(name)]
    )
    assert not upward, upward
