"""dvc.yaml and the stage code agree: same stage names, deps, outs, metrics and params."""

import importlib
from pathlib import Path

import pytest

from distillery.code_deps import is_code_dep
from distillery.config import load_params
from tasks.common import STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dvc_stages():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {s.name: s for s in repo.index.stages}


def test_stage_names_match_task_modules(dvc_stages):
    assert list(dvc_stages) == list(STAGES)
    for name in STAGES:
        assert (ROOT / "tasks" / f"{name}.py").is_file()
        assert dvc_stages[name].cmd == f"distillery stage {name}"


@pytest.mark.parametrize("stage", STAGES)
def test_declared_io_matches_dvc_yaml(dvc_stages, stage):
    params = load_params(ROOT / "params.yaml", check_files=False)
    io = importlib.import_module(f"tasks.{stage}").io(params)
    st = dvc_stages[stage]
    file_deps = [str(d.def_path) for d in st.deps if type(d).__name__ != "ParamsDependency"
                 and not is_code_dep(str(d.def_path))]  # code deps: tests/test_code_deps.py
    param_deps = [p for d in st.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
    assert file_deps == io.deps
    assert [str(o.def_path) for o in st.outs] == io.outs + io.metrics
    assert [str(o.def_path) for o in st.outs if o.metric] == io.metrics
    assert param_deps == io.params


def test_every_stage_input_is_produced_upstream_or_is_user_data(dvc_stages):
    params = load_params(ROOT / "params.yaml", check_files=False)
    produced: set[str] = set()
    for name in STAGES:
        io = importlib.import_module(f"tasks.{name}").io(params)
        for dep in io.deps:
            assert any(dep == o or dep.startswith(o + "/") for o in produced) or dep in (
                params.data.train_path, params.data.eval_path, params.gate.suite), \
                f"{name} reads {dep}, which no earlier stage writes"
        produced.update(io.outs + io.metrics)
