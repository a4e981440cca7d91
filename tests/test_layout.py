"""The tree's layers: which package may import which, read from the source itself.

Every ``import`` in ``sparklem_core`` counts, at module level or inside a function: a
function-level import still makes the dependency, it only hides it.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import sparklem_core

PACKAGE = Path(sparklem_core.__file__).parent

#: What each part may import besides itself. ``core`` is the package's root modules: the
#: plugin API and plugin discovery, safe file reads.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "settings": {"core"},
    "wire": {"core", "settings"},
    "agent": {"core", "settings", "wire"},
    "db": {"core", "settings", "wire"},
    "fleet": {"core", "settings", "wire", "db"},
    "processor": {"core", "settings", "wire", "db", "fleet"},
    "reading": {"core", "settings", "db", "fleet"},
    "http": {"core", "settings", "db", "fleet", "reading"},
    "admin": {"core", "settings", "wire", "db", "fleet"},
    "testing": {"core", "settings", "wire", "db", "fleet", "processor"},
    "dev": {"core", "settings", "wire", "db", "fleet", "processor", "admin", "http"},
    "cli": {"core", "settings", "wire", "db", "fleet", "processor", "reading", "http", "admin",
            "dev"},
}  # fmt: skip


def part_of(module: str) -> str:
    """``sparklem_core.db.store`` -> ``db``; a root module (``sparklem_core.files``) -> core."""
    parts = module.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "core"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent)
        if "migrations" not in relative.parts:
            found[".".join(relative.with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imported_names(path: Path) -> list[str]:
    """What a module imports, anywhere in it: ``a.b`` and, for ``from a.b import c``, ``a.b.c``."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def imports() -> dict[str, set[tuple[str, str]]]:
    """Each part's imports of other parts, as (imported part, importing file)."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for module, path in modules().items():
        source = part_of(module)
        for name in imported_names(path):
            if name.startswith("sparklem_core"):
                target = part_of(name) if name != "sparklem_core" else "core"
                if target != source:
                    found[source].add((target, str(path.relative_to(PACKAGE.parent))))
    return found


def test_every_part_is_declared() -> None:
    parts = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} | {"core"}
    assert parts == set(ALLOWED)


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = sorted(
        f"{file} imports {target}"
        for source, edges in imports().items()
        for target, file in edges
        if target not in ALLOWED[source]
    )
    assert wrong == []


def test_the_declared_layers_have_no_cycle() -> None:
    """If a may import b, b may not import a, directly or through others."""
    reach = {part: set(allowed) for part, allowed in ALLOWED.items()}
    for _ in ALLOWED:  # transitive closure, small enough to do plainly
        for allowed in reach.values():
            allowed |= set(itertools.chain.from_iterable(reach[a] for a in allowed))
    assert [part for part, allowed in reach.items() if part in allowed] == []


def test_no_module_imports_itself_back() -> None:
    """No cycle between modules, counting imports inside functions: such an import that
    dodges a cycle at load time still ties the two modules together. (Importing a
    package's ancestors does not count: Python always loads those first.)"""
    found = modules()
    edges: dict[str, set[str]] = {module: set() for module in found}
    for module, path in found.items():
        for name in imported_names(path):
            while name and name not in found:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                edges[module].add(name)
    cycles = []
    for start in edges:  # a depth-first walk from each module back to itself
        stack, seen = [(start, (start,))], set()
        while stack:
            module, trail = stack.pop()
            for target in edges[module]:
                if target == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*trail, target)))
    assert cycles == []
