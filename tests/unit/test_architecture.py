"""The layering ARCHITECTURE.md promises, read from the source: no import cycles, the CLI imported by no
library module, aiohttp imported by no core module but the transport."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "moneykit_async"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every module `path` imports, as absolute names, at any depth of the file (lazy imports count);
    with `runtime_only`, not those under `if TYPE_CHECKING:` (annotations only)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in imports_of(path) if t in modules and t != name}
        # A package's __init__ is imported with any of its modules, but is not a dependency of them.
        edges[name] = {t for t in targets if not name.startswith(t + ".")}
    return edges


def test_there_are_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [node, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_library_module_imports_the_cli() -> None:
    offenders = [
        name
        for name, targets in graph().items()
        if not name.startswith("moneykit_async.cli")
        and name != "moneykit_async.__main__"
        and any(t.startswith("moneykit_async.cli") for t in targets)
    ]
    assert offenders == []


def test_the_transport_is_the_only_core_module_that_imports_aiohttp() -> None:
    core = [p for p in PACKAGE.glob("_*.py")]
    assert len(core) > 15  # the core modules were found
    importers = sorted(
        module_name(p)
        for p in core
        if any(i == "aiohttp" or i.startswith("aiohttp.") for i in imports_of(p, runtime_only=True))
    )
    assert importers == ["moneykit_async._transport"]


def test_all_lists_exactly_the_public_names() -> None:
    import moneykit_async

    exported = set(moneykit_async.__all__)
    assert len(exported) == len(moneykit_async.__all__)  # no name twice
    assert all(hasattr(moneykit_async, name) for name in exported)
    public = {
        name
        for name, value in vars(moneykit_async).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("moneykit_async.")
    }
    assert public - exported == set()  # nothing public is left out of __all__
