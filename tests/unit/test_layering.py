"""Arrows point one way: services → mesh → libraries. mesh imports no service; no service imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("streaming", "analytics", "alert", "auth", "console")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_mesh_imports_no_service():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m.split(".")[0] == "services"
        )
        for path in (ROOT / "mesh").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service):
    others = {f"services.{name}" for name in SERVICES if name != service}
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if any(m == o or m.startswith(o + ".") for o in others)
        )
        for path in (ROOT / "services" / service).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
