"""Imports run downhill: nothing below the engine imports the engine.

Read from the source (every import statement, function-level ones included), so the test
holds whatever `import gentk` happens to load first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gentk"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def below_the_engine() -> list[Path]:
    files = [PACKAGE / "metrics.py"]
    data = PACKAGE / "data"
    files += sorted(data.glob("*.py")) if data.is_dir() else [PACKAGE / "data.py"]
    return files


@pytest.mark.parametrize("path", below_the_engine(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_metrics_and_data_import_neither_the_engine_nor_evaluation(path):
    bad = {m for m in imported_modules(path) if m in ("gentk.train", "gentk.evaluate", "gentk.compare", "gentk.cli") or m.startswith(("gentk.train.", "gentk.evaluate."))}
    assert not bad, f"{path.name} imports {', '.join(sorted(bad))}"
