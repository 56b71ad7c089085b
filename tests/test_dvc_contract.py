"""dvc.yaml is the one declaration of the stage graph (read through DVC's API, tasks/graph.py),
and the stage code agrees with it: a task module per stage, the paths it writes are those dvc.yaml
declares, every input is produced upstream or is the user's."""

import importlib
import shutil
from pathlib import Path

import pytest

from distillery.config import load_params
from tasks.common import report_rel
from tasks.evaluate import FINAL_STAGE, model_stages
from tasks.graph import reads_reports_of, stage_graph
from tasks.validate import docs_rel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    return stage_graph(ROOT)


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml", check_files=False)


def test_every_stage_runs_its_task_module(graph):
    assert list(graph)[:2] == ["demo_data", "validate"] and list(graph)[-1] == "evaluate"
    for name, stage in graph.items():
        assert stage.cmd == f"distillery stage {name}"
        assert callable(importlib.import_module(stage.module).run), name


def test_declared_outputs_are_the_paths_the_code_writes(graph, params):
    """Stage code takes its paths from params.yaml and writes reports/<stage>.json; dvc.yaml's
    `${...}` resolve to the same values, and every report the code writes is a declared metric."""
    model_dirs = {params.paths.demo_dir, params.paths.validated_dir, params.paths.teacher_dir, params.paths.logits_dir,
                  params.paths.student_dir, params.paths.pruned_dir, params.paths.quantized_dir,
                  params.paths.teacher_folds_dir}
    for name, stage in graph.items():
        assert set(stage.outs) <= model_dirs | {docs_rel(params)}, name
        if name != "demo_data":
            assert report_rel(params, name) in stage.metrics, name
    assert graph["evaluate"].metrics == (report_rel(params, "evaluate"), report_rel(params, "gate"))
    assert graph["quantize"].outs == (params.paths.quantized_dir,)
    assert graph["validate"].deps == (params.data.train_path, params.data.eval_path)
    assert {"base.seed", "gate"} == set(graph["evaluate"].params)
    # Changing the number of fold teachers re-runs their stage, not the teacher's fine-tuning.
    assert "teacher" in graph["teacher_folds"].params and graph["teacher_folds"].outs == (params.paths.teacher_folds_dir,)
    assert not any(k in ("teacher", "teacher.cross_fit_folds") for k in graph["teacher"].params)
    assert set(graph["teacher"].params) >= {f"teacher.{k}" for k in type(params.teacher).model_fields} - {
        "teacher.cross_fit_folds"}
    assert params.paths.teacher_folds_dir in graph["soft_targets"].deps


def test_every_stage_input_is_produced_upstream_or_is_user_data(graph, params):
    produced: set[str] = set()
    for name, stage in graph.items():
        for dep in stage.deps:
            assert any(dep == o or dep.startswith(o + "/") for o in produced) or dep in (
                params.data.train_path, params.data.eval_path, params.gate.suite), \
                f"{name} reads {dep}, which no earlier stage writes"
        produced.update(stage.outs + stage.metrics)


def test_evaluate_compares_the_model_stages_whose_reports_it_reads(graph):
    assert model_stages(graph) == ["teacher", "distill", "prune", "quantize"]
    assert model_stages(graph)[-1] == FINAL_STAGE
    assert reads_reports_of(graph, "teacher") == []


def test_the_graph_follows_an_edited_dvc_yaml_and_a_project_without_dvc_dir(tmp_path):
    """A copied project (no `.dvc/`) is read too; a stage added to dvc.yaml is a stage everywhere."""
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, tmp_path / f)
    text = (tmp_path / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(text + "\n  extra:\n    cmd: distillery stage extra\n"
                                              "    deps:\n      - ${paths.quantized_dir}\n")
    graph = stage_graph(tmp_path)
    assert list(graph)[-1] == "extra" and graph["extra"].deps == ("models/quantized",)
    assert list(graph)[:-1] == list(stage_graph(ROOT))


def test_a_stage_dvc_yaml_does_not_declare_is_refused_by_name():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "distillery_cli", "--project-dir", str(ROOT), "stage", "nosuch"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "dvc.yaml: no stage 'nosuch' (its stages: demo_data, validate," in run.stderr
