"""Imports run downhill: nothing below the engine imports the engine, and ``import gentk`` is light.

The layering is read from the source (every import statement, function-level ones
included), so the test holds whatever `import gentk` happens to load first; the light
import is measured in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
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
    bad = {
        m
        for m in imported_modules(path)
        if m in ("gentk.train", "gentk.evaluate", "gentk.compare", "gentk.cli") or m.startswith(("gentk.train.", "gentk.evaluate."))
    }
    assert not bad, f"{path.name} imports {', '.join(sorted(bad))}"


def test_importing_the_declarations_loads_no_torch_and_no_engine():
    """What a plugin imports to declare its options, ``python -X importtime -c "import gentk.options"``,
    loads neither torch (nor numpy) nor the model and the engine; `gentk.train` is the function once they load."""
    code = "import gentk.options"
    found = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    loaded = [line.rsplit("|", 1)[-1].strip() for line in found.stderr.splitlines() if line.startswith("import time:")]
    assert "gentk.options" in loaded and "gentk.plugins" in loaded
    heavy = [m for m in loaded if m.split(".")[0] in ("torch", "numpy") or m in ("gentk.model", "gentk.train")]
    assert not heavy, f"import gentk.options loads {', '.join(heavy)}"

    code = (
        "import gentk, gentk.train; from gentk.train import TrainResult; print(callable(gentk.train), gentk.train.__module__, "
        "gentk.build_model.__name__)"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["True", "gentk.train", "build_model"]
