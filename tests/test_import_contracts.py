"""Imports point one way, with no cycle: core (`distillery/`) <- stages (`tasks/`) <-
orchestration (`flows/`) <- entry points (`bench/`, `distillery_cli/`).

The contracts live in pyproject.toml ([tool.importlinter]); `lint-imports` (import-linter)
checks them on the import graph, imports inside functions included. Cost: about 1 s each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ("distillery", "tasks", "flows", "bench", "distillery_cli")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "300"}  # the tree under test; no wrapped lines
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache", "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_its_import_contracts():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout, out.stdout


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """The packages' sources and pyproject.toml, to break on purpose."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=lambda d, names: [
            n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n == "__pycache__"])
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_an_upward_import_inside_a_function_breaks_the_layers(tree_copy):
    append(tree_copy / "distillery" / "gate.py", "def _hidden():\n    from flows.pipeline import pipeline\n"
                                                 "    return pipeline")
    out = lint_imports(tree_copy)
    assert out.returncode == 1, out.stdout
    assert "nothing imports upward) BROKEN" in out.stdout and "distillery.gate -> flows.pipeline" in out.stdout


def test_a_cycle_inside_the_core_is_caught(tree_copy):
    append(tree_copy / "distillery" / "bilstm.py", "def _hidden():\n    from distillery.student import build_student\n"
                                                   "    return build_student")
    out = lint_imports(tree_copy)
    assert out.returncode == 1, out.stdout
    assert "No import cycle between the modules of any package BROKEN" in out.stdout
    assert "No cycles are allowed in distillery." in out.stdout
    assert ".student -> .bilstm" in out.stdout or ".bilstm -> .student" in out.stdout


def test_the_core_may_not_import_prefect(tree_copy):
    append(tree_copy / "distillery" / "measure.py", "def _hidden():\n    import prefect\n    return prefect")
    out = lint_imports(tree_copy)
    assert out.returncode == 1 and "versioning libraries BROKEN" in out.stdout, out.stdout
