"""The Prefect server goes away under `distillery serve` and comes back.

A real `prefect server start` on 127.0.0.1 (its database in a temp PREFECT_HOME), `distillery
serve` on a copy of the finished tiny project. A run is started by hand; while it runs, the
server is stopped (its process group, by PID) for longer than the runner tolerates, then started
again on the same port and database. Asserted: serve stays up and says in its log when the
server went away and when it came back; the run the outage killed is marked Crashed with why (not
left Running for ever); the next run after the return completes; the registry holds the model
exactly once, complete, with the champion alias on a decided version.

`PREFECT_CLIENT_MAX_RETRIES=1` (default 5, about a minute of retries per request) shortens the
outage it takes to exhaust the runner and the run in flight, from minutes to about 10 s: the same
code paths, sooner. Every process is started here and stopped here, by its process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import copy_project, free_port, prefect_client, stop_group

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NAME = "distillery-student"
OUTAGE_S = 20  # longer than the runner tolerates with one client retry (3 failed polls, ~10 s)


class Procs:
    def __init__(self, tmp: Path, env: dict):
        self.tmp, self.env, self.procs, self.logs = tmp, env, [], {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.logs.setdefault(name, self.tmp / f"{name}.log")
        with open(log, "a") as fh:
            proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def text(self, name: str) -> str:
        return self.logs[name].read_text()

    def wait_for(self, name: str, proc: subprocess.Popen, text: str, timeout: float, count: int = 1) -> None:
        deadline = time.time() + timeout
        while self.text(name).count(text) < count:
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.text(name)[-4000:]}"
            assert time.time() < deadline, f"{name}: no {text!r} (x{count}) in {timeout:.0f} s:\n{self.text(name)[-4000:]}"
            time.sleep(0.5)


def start_server(procs: Procs, port: int) -> subprocess.Popen:
    proc = procs.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                          "--port", str(port), "--no-ui"])
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        assert proc.poll() is None, procs.text("prefect-server")[-3000:]
        assert time.time() < deadline, "the Prefect server did not answer in 180 s"
        time.sleep(0.5)


def wait_for_state(api: str, run_id, done, timeout: float, serve_log: str = ""):
    deadline = time.time() + timeout
    while True:
        with prefect_client(api) as c:
            run = c.read_flow_run(run_id)
        if run.state is not None and done(run.state):
            return run
        assert time.time() < deadline, f"run {run.name}: {run.state} after {timeout:.0f} s\n{serve_log[-3000:]}"
        time.sleep(0.5)


def test_serve_survives_a_prefect_server_outage(finished_project, tmp_path):
    from mlflow import MlflowClient

    root = copy_project(finished_project, tmp_path / "p")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": api,
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_CLIENT_MAX_RETRIES": "1"}
    procs = Procs(tmp_path, env)
    try:
        server = start_server(procs, port)
        serve = procs.start("serve", [str(BIN / "distillery"), "--project-dir", str(root), "serve",
                                      "--watch-interval", "0"])
        procs.wait_for("serve", serve, "serving distillery-retrain/", 120)
        with prefect_client(api) as c:
            dep = c.read_deployment_by_name(f"distillery-retrain/{root.name}")
            first = c.create_flow_run_from_deployment(dep.id)
        wait_for_state(api, first.id, lambda s: s.is_running(), 120, procs.text("serve"))

        stop_group(server)  # the server goes away while the run is in flight
        down_at = time.time()
        procs.wait_for("serve", serve, "does not answer", 30)
        procs.wait_for("serve", serve, "a new runner starts when it answers again", 60)
        time.sleep(max(0.0, down_at + OUTAGE_S - time.time()))
        assert serve.poll() is None

        server = start_server(procs, port)  # back: the same port, the same database
        procs.wait_for("serve", serve, "answers again after", 60)
        procs.wait_for("serve", serve, "serving distillery-retrain/", 120, count=2)  # a new runner
        log = procs.text("serve")
        assert f"the Prefect server at {api} does not answer" in log
        # The run the outage killed is reported, not lost: Crashed, saying why.
        crashed = wait_for_state(api, first.id, lambda s: s.is_final(), 30, log)
        assert crashed.state.is_crashed(), crashed.state
        assert f"Prefect server at {api} was unreachable" in crashed.state.message
        assert f"marked crashed: {first.name}" in log

        with prefect_client(api) as c:  # the next run, after the server's return, completes
            second = c.create_flow_run_from_deployment(dep.id)
        done = wait_for_state(api, second.id, lambda s: s.is_final(), 300, procs.text("serve"))
        assert done.state.is_completed(), f"{done.state}\n{procs.text('serve')[-3000:]}"
        assert serve.poll() is None

        # The registry: the model once, registration complete, lineage and decision, the champion on it.
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = client.search_model_versions(f"name='{NAME}'")
        assert len(versions) == 1, [(v.version, v.tags) for v in versions]
        mv = client.get_model_version(NAME, versions[0].version)
        assert mv.tags["registration"] == "complete" and mv.tags["promotion_decided"] == "true"
        assert {"git_commit", "params_hash", "model_md5", "gate_decision"} <= set(mv.tags)
        assert "champion" in mv.aliases
        history = json.loads(client.get_registered_model(NAME).tags["champion_history"])
        assert [h["version"] for h in history] == [str(mv.version)]
    finally:
        for proc in procs.procs:
            stop_group(proc)
