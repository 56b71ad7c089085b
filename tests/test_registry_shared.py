"""The registry under real conditions: two pipeline runs finishing at once against one SQLite
registry, and a run against a real `mlflow server` on 127.0.0.1. Each run is a real
`distillery run` process on a tiny random-init BERT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port, make_project, tiny_params, wait_for_http

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NAME = "distillery-student"


def new_project(root: Path, tracking_uri: str, seed: int) -> Path:
    from distillery.demo_data import make_demo_dataset

    params = tiny_params(base={"seed": seed}, register={"tracking_uri": tracking_uri})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], seed)
    return make_project(root, params, list(train.text) + list(eval_.text))


def start_run(project: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "distillery"), "--project-dir", str(project), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def registry_state(uri: str) -> tuple[list[str], dict[str, set[str]], list[dict]]:
    from mlflow import MlflowClient

    from tasks.promotion import history
    from tasks.register import aliases_by_version

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(str(v.version) for v in c.search_model_versions(f"name='{NAME}'"))
    return versions, aliases_by_version(c, NAME), history(c, NAME)


def test_two_runs_finishing_at_once_leave_a_consistent_registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    a = new_project(tmp_path / "a", uri, seed=1)
    b = new_project(tmp_path / "b", uri, seed=2)  # another seed: a different model, so both register
    runs = [start_run(a), start_run(b)]
    outputs = [r.communicate(timeout=900)[0] for r in runs]
    for r, out in zip(runs, outputs):
        assert r.returncode == 0, out[-3000:]
        assert "database is locked" not in out
    versions, aliases, moves = registry_state(uri)
    assert versions == ["1", "2"]  # no version lost
    champions = [v for v, al in aliases.items() if "champion" in al]
    assert len(champions) == 1  # exactly one champion
    assert [v for v, al in aliases.items() if "challenger" in al] == ["2"]
    # The history is one consistent chain: each move starts from the champion before it.
    assert moves and moves[0]["from"] is None
    for before, after in zip(moves, moves[1:]):
        assert after["from"] == before["version"]
    assert moves[-1]["version"] == champions[0]


def test_pipeline_against_a_real_mlflow_server(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    try:
        wait_for_http(f"{uri}/health", server)
        project = new_project(tmp_path / "p", uri, seed=3)
        run = start_run(project)
        out = run.communicate(timeout=900)[0]
        assert run.returncode == 0, out[-3000:]
        versions, aliases, _ = registry_state(uri)
        assert versions == ["1"] and aliases["1"] == {"challenger", "champion"}
        import mlflow

        mlflow.set_tracking_uri(uri)
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        answer = model.predict(["not bad at all", "the battery died after a day"])
        assert list(answer["label"]) and set(answer["label"]) <= {"negative", "neutral", "positive"}
        assert not (project / "mlruns" / "mlflow.db").exists()  # everything went to the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: it and its workers
        server.wait(timeout=30)
