"""The sweep for real: a Dask LocalCluster of 2 worker processes trains, prunes, quantizes and gates
4 tiny students; the front and the choice are checked against the members' own reports, and
`distillery run --params best.params.yaml` reproduces the chosen member's accuracy and registers it.
(A sweep where no member passes is tested on known figures in test_sweep_units.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distillery.env import configure_environment
from tests.helpers import make_cue_dataset, make_project, tiny_params

pytestmark = pytest.mark.slow
SPACE = {"student.layers": [[0], [0, 2]], "quantize.method": ["onnx_dynamic_int8", "onnx_int4_embeddings"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    # Learnable rows (see make_cue_dataset), so that members reach different, non-trivial models.
    params = tiny_params(data={"train_path": "cue_train.csv", "eval_path": "cue_eval.csv"},
                         teacher={"epochs": 20, "learning_rate": 0.003}, distill={"epochs": 3},
                         sweep={"space": SPACE, "workers": 2})
    train, eval_ = make_cue_dataset()
    root = tmp_path_factory.mktemp("sweep")
    train.to_csv(root / "cue_train.csv", index=False)
    eval_.to_csv(root / "cue_eval.csv", index=False)
    root = make_project(root, params, list(train.text) + list(eval_.text))
    configure_environment(root)
    return root


def run_sweep(root: Path) -> dict:
    from flows.sweep import sweep, task_runner

    return sweep.with_options(task_runner=task_runner(2, None))(project_dir=str(root))


def member_figures(root: Path, name: str) -> dict:
    from tasks.common import read_json

    reports = root / "reports" / "sweep" / "members" / name / "reports"
    return {**read_json(reports / "quantize.json"), "gate_passed": read_json(reports / "gate.json")["passed"]}


def test_sweep_runs_every_member_on_dask_and_the_choice_reproduces(project):
    from mlflow import MlflowClient

    from distillery_cli.cli import prepare_params
    from distillery.config import load_params, params_from_dict, read_raw
    from distillery.onnx_model import OnnxClassifier
    from flows.pipeline import pipeline

    summary = run_sweep(project)
    members = summary["members"]
    assert len(members) == 4 and [m["error"] for m in members] == [None] * 4
    # Every member ran in a Dask worker process, and both workers took members.
    pids = {m["result"]["pid"] for m in members}
    assert os.getpid() not in pids and len(pids) == 2
    assert all(m["result"]["worker"].startswith("tcp://127.0.0.1:") for m in members)
    figs = {m["member"]: member_figures(project, m["member"]) for m in members}
    for m in members:
        assert (project / "reports/sweep/members" / m["member"] / "quantized/model.onnx").is_file()
        assert m["accuracy"] == figs[m["member"]]["accuracy"] and m["size_mb"] == figs[m["member"]]["size_mb"]
    # Members' figures differ (layers, 8- vs 4-bit embeddings), so the front and the choice mean something.
    assert len({f["size_mb"] for f in figs.values()}) == 4

    def dominated(f):
        return any(g["accuracy"] >= f["accuracy"] and g["latency_p50_ms"] <= f["latency_p50_ms"]
                   and g["size_mb"] <= f["size_mb"] and g != f for g in figs.values())

    assert sorted(summary["front"]) == sorted(n for n, f in figs.items() if not dominated(f))
    passing = {n: f for n, f in figs.items() if f["gate_passed"]}
    assert summary["chosen"] == min(passing, key=lambda n: passing[n]["size_mb"])
    assert summary["chosen_overrides"] == next(m["overrides_dict"] for m in members if m["member"] == summary["chosen"])
    out = project / "reports" / "sweep"
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "members.md").read_text()
    assert table.count("| m00") == 4 and table.count("**yes**") == 1
    assert len((out / "members.csv").read_text().splitlines()) == 5

    # The MLflow parent run holds one child run per member, with its figures and gate.
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("distillery")
    parent = client.search_runs([exp.experiment_id], filter_string="tags.`distillery.sweep` = 'true'")[0]
    assert parent.data.tags["sweep.chosen"] == summary["chosen"]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(figs)
    for c in children:
        assert c.data.metrics["accuracy"] == figs[c.info.run_name]["accuracy"]
        assert c.data.tags["sweep.chosen"] == str(c.info.run_name == summary["chosen"]).lower()
    assert client.search_registered_models() == []  # the sweep registers nothing

    # The params file is valid and the normal pipeline reproduces the chosen member from it.
    best = project / summary["best_params"]
    chosen_params = params_from_dict(read_raw(best), str(best), project)
    assert chosen_params.student.layers == summary["chosen_overrides"]["student.layers"]
    assert chosen_params.paths == load_params(project / "params.yaml").paths
    prepare_params(project, str(best), [])   # what `distillery run --params FILE` does, then the flow
    result = pipeline(project_dir=str(project))
    final = next(r for r in result["table"] if r["stage"] == "quantize")
    want = figs[summary["chosen"]]
    # Same code, seed, threads and inputs: equal, not just close (tolerance 0).
    assert (final["accuracy"], final["macro_f1"], final["params"]) == (want["accuracy"], want["macro_f1"], want["params"])
    assert abs(final["size_mb"] - want["size_mb"]) < 1e-3
    # ... down to the final model's logits on the eval texts.
    clf = {d: OnnxClassifier.from_dir(d, threads=1) for d in (project / "models/quantized",
                                                             project / "reports/sweep/members" / summary["chosen"] / "quantized")}
    texts = list(pd.read_csv(project / "cue_eval.csv").text)
    a, b = (c.predict_logits(texts) for c in clf.values())
    assert np.array_equal(a, b)
    assert result["registration"]["version"] == "1"

