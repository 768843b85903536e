"""The package's layers (docs/style.md): lower layers never import upper ones, and no module-level import cycles.

Read from the source with `ast` (no import runs): every `import tether...` / `from tether... import`, at module level
or inside a function."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tether"
LOWER = ("tether.data", "tether.evaluation", "tether.critics", "tether.losses", "tether.weights", "tether.run_files")
UPPER = ("tether.runner", "tether.bench", "tether.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tether"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tether")}
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if within(n, LOWER)))
def test_lower_layers_do_not_import_upward(name):
    upward = sorted(target for target in imports(MODULES[name]) if within(target, UPPER))
    assert not upward, f"{name} imports {upward}"


def test_no_module_level_import_cycles():
    graph = {name: {t for t in imports(path, module_level_only=True) if t in MODULES} for name, path in MODULES.items()}
    for name in graph:  # a package's __init__ importing its own submodules is how packages export: not a cycle
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path, node, target])
            if target not in state:
                visit(target, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
