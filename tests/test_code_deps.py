"""Code as a DVC dependency: dvc.yaml lists each stage's source files (from the import graph),
they cannot drift from the imports, and a code change re-runs that stage and those after it only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.code_deps import PACKAGES, code_files, declared_code, drift, stage_code, write
from tasks.graph import stage_names
from tests.helpers import copy_project

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dvc_yaml_code_deps_match_the_imports():
    lines = drift(ROOT)
    assert not lines, "dvc.yaml's code deps drifted (run `distillery dvc-deps --write`):\n" + "\n".join(lines)


def test_every_stage_depends_on_its_task_module_and_config():
    declared = declared_code(ROOT / "dvc.yaml")
    assert list(declared) == stage_names(ROOT)
    for stage, files in declared.items():
        assert {f"tasks/{stage}.py", "tasks/common.py", "distillery/config.py"} <= set(files), stage
    # quantize's own modules are nobody else's: a change to them re-runs quantize and what follows only
    only_quantize = set(declared["quantize"]) - {f for s, fs in declared.items() if s != "quantize" for f in fs}
    assert {"distillery/quantization.py", "distillery/quant_select.py", "tasks/quantize.py"} <= only_quantize


def test_import_graph_follows_function_level_imports_and_ignores_outside_modules(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "tasks" / "demo.py").write_text("import json\nfrom distillery import a\n")
    (tmp_path / "distillery" / "a.py").write_text("def f():\n    from distillery.b import g\n    import numpy\n")
    (tmp_path / "distillery" / "b.py").write_text("import distillery.c as c\n")
    (tmp_path / "distillery" / "c.py").write_text("")
    (tmp_path / "distillery" / "unused.py").write_text("")
    assert code_files(tmp_path, "tasks.demo") == ["distillery/__init__.py", "distillery/a.py", "distillery/b.py",
                                                  "distillery/c.py", "tasks/__init__.py", "tasks/demo.py"]


def test_drift_names_the_stage_and_the_files_and_write_repairs_it(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "dvc.yaml").read_text()
    broken = text.replace("      - distillery/quant_select.py\n", "", 1).replace(
        "      - tasks/evaluate.py\n", "      - tasks/evaluate.py\n      - distillery/drift.py\n", 1)
    (tmp_path / "dvc.yaml").write_text(broken)
    assert drift(tmp_path) == ["stage quantize: missing ['distillery/quant_select.py']; extra -",
                               "stage evaluate: missing -; extra ['distillery/drift.py']"]
    assert write(tmp_path) == ["quantize", "evaluate"]
    assert (tmp_path / "dvc.yaml").read_text() == text  # comments, order and style kept
    # a new import shows up as a missing dep of every stage that now reaches it
    (tmp_path / "distillery" / "newmod.py").write_text("")
    (tmp_path / "distillery" / "quant_select.py").write_text(
        (tmp_path / "distillery" / "quant_select.py").read_text() + "\nfrom distillery import newmod  # noqa\n")
    assert drift(tmp_path) == ["stage quantize: missing ['distillery/newmod.py']; extra -"]
    assert stage_code(tmp_path, ["quantize"])["quantize"] == sorted(
        declared_code(tmp_path / "dvc.yaml")["quantize"] + ["distillery/newmod.py"])


@pytest.mark.slow
def test_a_code_change_reruns_its_stage_and_the_ones_after_it_only(finished_project, tmp_path, prefect_harness,
                                                                    monkeypatch):
    """A finished tiny project whose code is a copy (first on PYTHONPATH, so the copy is what the
    stages run); an edit to a module only quantize imports re-runs quantize and evaluate, then register."""
    from distillery.env import configure_environment
    from flows.pipeline import pipeline

    root = copy_project(finished_project, tmp_path / "p")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])  # the flow's `dvc repro` subprocesses too
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout) == {}, status.stdout  # the copy is a finished project

    edited = root / "distillery" / "quant_select.py"
    edited.write_text(edited.read_text() + "\n# a code change (a comment is enough: DVC hashes the file)\n")
    status = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True)
    changed = json.loads(status.stdout)
    assert list(changed) == ["quantize"], changed  # the stages after it change once quantize has run
    assert changed["quantize"][0]["changed deps"] == {"distillery/quant_select.py": "modified"}

    configure_environment(root)
    result = pipeline(project_dir=str(root))
    assert {s for s, ran in result["ran"].items() if ran} == {"quantize", "evaluate"}, result["ran"]
    assert result["registration"]["version"] == "1"  # register ran (the first registration here)
    assert json.loads(subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True,
                                     text=True).stdout) == {}
