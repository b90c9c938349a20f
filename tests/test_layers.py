"""The layer table of DESIGN.md, enforced: who may import whom, and where libraries live."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"config", "models", "connectors", "sync", "api", "sandbox", "main"}

MAY_IMPORT = {
    "config": {"config"},
    "models": {"models", "config"},
    "connectors": {"connectors", "models", "config"},
    "sync": {"sync", "models", "connectors", "config"},
    "api": {"api", "sync", "models", "connectors", "config"},
    "sandbox": {"sandbox", "config"},
}
# One home per mechanism (STYLE 15): the library may only be imported inside these layers.
LIBRARY_HOMES = {
    "httpx": {"connectors", "sandbox"},
    "sqlalchemy": {"models"},
    "alembic": {"models"},
    "fastapi": {"api"},
    "uvicorn": {"api", "sandbox"},
    "apscheduler": {"sync", "api"},
    "uvloop": {"config"},
}
# Connectors see models' types only, never the store.
CONNECTORS_MAY_NOT = {"models.store", "models.tables", "models.db"}


def _modules() -> list[Path]:
    return sorted(p for layer in MAY_IMPORT for p in (ROOT / layer).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_imports(path: Path) -> None:
    layer = path.relative_to(ROOT).parts[0]
    for name in _imports(path):
        top = name.split(".")[0]
        if top in OURS:
            assert top in MAY_IMPORT[layer], f"{layer} may not import {name}"
        if top in LIBRARY_HOMES:
            assert layer in LIBRARY_HOMES[top], (
                f"{top} belongs in {LIBRARY_HOMES[top]}, not {layer}"
            )
        if layer == "connectors":
            assert name not in CONNECTORS_MAY_NOT, f"connectors may use models' types only: {name}"
