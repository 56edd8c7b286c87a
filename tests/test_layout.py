"""The map tells the truth (docs/design.md, "Stages and folders"): the folders it lists are the
package's, and which package imports which is exactly its table — no more (a sideways or upward
import fails here) and no less (a stale entry fails too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffcut_edge"
DESIGN = ROOT / "docs" / "design.md"


def _packages() -> set[str]:
    return {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _ground_floor() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def _documented_imports() -> dict[str, set[str]]:
    text = DESIGN.read_text(encoding="utf-8")
    table = text.split("<!-- imports:begin -->")[1].split("<!-- imports:end -->")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[1]))
    return rows


def _imported(path: Path) -> set[str]:
    """The diffcut_edge top-level names a module imports, anywhere in it (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "diffcut_edge":
                names.update(f"diffcut_edge.{alias.name}" for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("diffcut_edge.")}


def _actual_imports() -> dict[str, dict[str, list[str]]]:
    """package -> the other packages it imports -> the files that do."""
    packages, graph = _packages(), {}
    for package in packages:
        edges: dict[str, list[str]] = {}
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for name in _imported(path) & packages - {package}:
                edges.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
        graph[package] = edges
    return graph


def test_the_table_lists_every_package_and_the_folder_table_too():
    documented = _documented_imports()
    assert set(documented) == _packages()
    text = DESIGN.read_text(encoding="utf-8")
    for package in _packages():
        assert f"| `{package}/` |" in text, f"docs/design.md's folder table has no row for {package}/"


def test_imports_between_packages_are_exactly_the_documented_ones():
    documented, actual = _documented_imports(), _actual_imports()
    undocumented = {
        f"{p} -> {q} ({', '.join(files)})"
        for p, edges in actual.items()
        for q, files in edges.items()
        if q not in documented[p]
    }
    unused = {f"{p} -> {q}" for p, allowed in documented.items() for q in allowed if q not in actual.get(p, {})}
    assert undocumented == set(), "imports docs/design.md does not allow"
    assert unused == set(), "docs/design.md lists imports the code does not have"


def test_the_ground_floor_imports_only_itself():
    ground = _ground_floor()
    bad = {
        f"{path.name} imports {name}"
        for path in PACKAGE.glob("*.py")
        for name in _imported(path) - ground - {"__version__"}
    }
    assert bad == set()


def test_no_package_imports_the_cli():
    assert all("cli" not in edges for package, edges in _actual_imports().items() if package != "cli")
