"""Imports point one way (docs/design.md, "Stages and folders"): the core imports no stage above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffcut_edge"
# package -> the sibling packages it must never import, at any depth (lazily included)
FORBIDDEN = {
    "runtime": ("apps", "eval", "export", "diffcut_ref", "models", "cli"),
    "apps": ("eval", "export", "diffcut_ref", "models", "cli"),
    "eval": ("export", "cli"),   # --reference loads a pipeline (models, diffcut_ref), lazily
    "models": ("runtime", "apps", "eval", "export", "diffcut_ref", "cli"),
    "serve": ("eval", "export", "diffcut_ref", "models", "cli"),
}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("diffcut_edge.")}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_stage_above_it(package):
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in _imported_modules(path):
            top = name.split(".")[1]
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert bad == []
