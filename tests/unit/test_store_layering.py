"""The dependency rule for `store/` (DESIGN.md): it imports nothing of ours outside `store/`, so the
persistence layer can be read, tested and reused without the daemon or the camera drivers."""

from __future__ import annotations

import ast
from pathlib import Path

import store

OURS_OUTSIDE_STORE = ("ingestd", "drivers", "migrations", "tests", "bench")


def imported_modules(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module)
    return names


def test_store_imports_nothing_of_ours_outside_store() -> None:
    sources = sorted(Path(store.__file__).parent.rglob("*.py"))
    assert any(p.parent.name == "objects" for p in sources)  # the package's modules are read too
    crossing = {
        str(source.relative_to(Path(store.__file__).parent.parent)): sorted(
            name for name in imported_modules(source) if name.split(".")[0] in OURS_OUTSIDE_STORE
        )
        for source in sources
    }
    assert {path: names for path, names in crossing.items() if names} == {}
