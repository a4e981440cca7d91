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


def imports() -> dict[str, set[tuple[str, str]]]:
    """Each part's imports of other parts, as (imported part, importing file)."""
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent)
        if "migrations" in relative.parts:
            continue
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        source = part_of(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("sparklem_core"):
                    target = part_of(name) if name != "sparklem_core" else "core"
                    if target != source:
                        found[source].add((target, str(relative)))
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
