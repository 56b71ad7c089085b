"""Scheduled retraining and the dashboards, against real servers on 127.0.0.1.

One project (a random-init tiny BERT, ~90 rows under `incoming/`) serves the module, and its story
(`STEPS`, each test reaches the step it checks, so any test runs alone too):
`distillery ui` starts the MLflow UI and a real Prefect server over the project's stores;
`distillery schedule` creates the deployment with its cron schedule and new-data trigger there;
`distillery serve` runs its runs and watches the data. New data is written: the watcher's event
starts a run through the automation, which trains and registers the champion. A run with nothing
changed then trains nothing. Ctrl-C stops `serve` (pausing the schedule) and `ui` (both servers).
Every process is started here and stopped here, by its process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Story, free_port, make_project, prefect_client, tiny_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NAME = "distillery-student"
TRAIN, EVAL = "incoming/train.csv", "incoming/eval.csv"
CRON = "0 3 * * 1"
RUN_TIMEOUT_S = 420


def default_sigint() -> None:
    """Ctrl-C behaves as in a terminal even where this test runs with SIGINT ignored (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Stack:
    """The project, the servers' URLs and the processes this module started."""

    def __init__(self, root: Path):
        self.root, self.procs, self.logs = root, {}, {}
        self.mlflow_port, self.prefect_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": self.api,
                    "PREFECT_HOME": str(root / ".prefect"), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = self.root.parent / f"{self.root.name}-{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen([str(BIN / "distillery"), "--project-dir", str(self.root), *args],
                                    env=env or self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=default_sigint)
        self.procs[name], self.logs[name] = proc, log
        return proc

    def wait_for_output(self, name: str, text: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while text not in self.logs[name].read_text():
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.logs[name].read_text()[-3000:]}"
            assert time.time() < deadline, f"{name}: no {text!r} in {timeout} s:\n{self.logs[name].read_text()[-3000:]}"
            time.sleep(0.5)

    def prefect(self):
        return prefect_client(self.api)


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from distillery.demo_data import make_demo_dataset

    params = tiny_params(data={"train_path": TRAIN, "eval_path": EVAL})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("scheduled"), params, list(train.text) + list(eval_.text))
    (root / "incoming").mkdir()
    train.to_csv(root / TRAIN, index=False)
    eval_.to_csv(root / EVAL, index=False)
    s = Stack(root)
    s.start("ui", "ui", "--mlflow-port", str(s.mlflow_port), "--prefect-port", str(s.prefect_port))
    started = []
    try:
        s.wait_for_output("ui", "Ctrl-C stops both")
        started = descendants(s.procs["ui"].pid)
        s.story = Story(root, {"scheduled": lambda _: schedule(s), "new_data_run": lambda _: new_data_run(s),
                               "nothing_changed_run": lambda _: nothing_changed_run(s),
                               "stopped": lambda _: stop_serve_and_ui(s)})
        yield s
    finally:  # whatever a failed test left running: every group this module started
        for proc in s.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in started:
            if alive(pid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode()


def flow_runs(s: Stack, flow_name: str):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with s.prefect() as c:
        return c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                sort=FlowRunSort.START_TIME_ASC)


def wait_for_final(s: Stack, match):
    """The first retrain run for which `match(run)` holds, once it reached a final state."""
    deadline = time.time() + RUN_TIMEOUT_S
    while True:
        run = next((r for r in flow_runs(s, "distillery-retrain") if match(r)), None)
        if run is not None and run.state is not None and run.state.is_final():
            return run
        assert s.procs["serve"].poll() is None, s.logs["serve"].read_text()[-3000:]
        assert time.time() < deadline, f"no finished retrain run in {RUN_TIMEOUT_S} s:\n" \
                                       f"{s.logs['serve'].read_text()[-3000:]}"
        time.sleep(2)


def artifacts_of(s: Stack, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with s.prefect() as c:
        return c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def mlflow_client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mtimes(root: Path, *dirs: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in (root / d).rglob("*") if p.is_file()}


def test_ui_serves_mlflow_and_prefect_over_http(stack):
    status, page = get(f"http://127.0.0.1:{stack.mlflow_port}/")
    assert status == 200 and "<html" in page.lower() and "mlflow" in page.lower()
    status, page = get(f"http://127.0.0.1:{stack.prefect_port}/")
    assert status == 200 and "<html" in page.lower() and "prefect" in page.lower()
    assert get(f"{stack.api}/health")[1] == "true"
    # Over the project's own stores: the MLflow database under mlruns/, the Prefect one under .prefect/.
    assert (stack.root / "mlruns" / "mlflow.db").is_file() and (stack.root / ".prefect").is_dir()


def schedule(s: Stack) -> dict:
    """`distillery schedule`, first without a Prefect server to talk to, then with the module's."""
    cmd = [str(BIN / "distillery"), "--project-dir", str(s.root), "schedule", "--cron", CRON]
    return {"no_server": subprocess.run(cmd, env={k: v for k, v in s.env.items() if k != "PREFECT_API_URL"},
                                        capture_output=True, text=True),
            "out": subprocess.run(cmd, env=s.env, capture_output=True, text=True)}


def new_data_run(s: Stack):
    """`distillery serve` watching; new data lands: another draw of the demo data (the same classes
    and lengths, other rows). Returns the retrain run the automation started, once final."""
    s.start("serve", "serve", "--watch-interval", "1")
    s.wait_for_output("serve", "watch: watching")
    from distillery.demo_data import make_demo_dataset

    train, _ = make_demo_dataset(90, 7)
    train.iloc[:60].to_csv(s.root / TRAIN, index=False)
    return wait_for_final(s, lambda r: r.created_by is not None and r.created_by.type == "AUTOMATION")


def nothing_changed_run(s: Stack) -> dict:
    """What the schedule does at 03:00 on Monday: a run of the deployment; with what was there before."""
    c = mlflow_client(s.root)
    exp = c.get_experiment_by_name("distillery")
    before = {"runs": {r.info.run_id for r in pipeline_runs(c, exp)}, "files": mtimes(s.root, "models", "data", "reports"),
              "versions": [str(v.version) for v in c.search_model_versions(f"name='{NAME}'")]}
    with s.prefect() as pc:
        dep = pc.read_deployment_by_name(f"distillery-retrain/{s.root.name}")
        created = pc.create_flow_run_from_deployment(dep.id)
    return {"before": before, "run": wait_for_final(s, lambda r: r.id == created.id)}


def stop_serve_and_ui(s: Stack) -> dict:
    """Ctrl-C to `serve` (started by the new-data step), then to `ui`; what each did and left."""
    serve = s.procs["serve"]
    os.kill(serve.pid, signal.SIGINT)
    out = {"serve_rc": serve.wait(timeout=60)}
    with s.prefect() as c:
        out["paused"] = c.read_deployment_by_name(f"distillery-retrain/{s.root.name}").paused
    ui = s.procs["ui"]
    out["children"] = children = descendants(ui.pid)
    os.kill(ui.pid, signal.SIGINT)
    out["ui_rc"] = ui.wait(timeout=60)
    deadline = time.time() + 10
    while any(alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.2)
    return out


def pipeline_runs(c, exp):
    return c.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName LIKE 'pipeline-%'")


def test_schedule_creates_the_deployment_with_its_cron_and_new_data_trigger(stack):
    step = stack.story.reach("scheduled")
    no_server, out = step["no_server"], step["out"]
    assert no_server.returncode == 2 and "PREFECT_API_URL" in no_server.stderr
    assert out.returncode == 0, out.stderr[-3000:]
    with stack.prefect() as c:
        dep = c.read_deployment_by_name(f"distillery-retrain/{stack.root.name}")
        automations = c.read_automations_by_name(f"new data for {stack.root.name}")
    assert [s.schedule.cron for s in dep.schedules] == [CRON] and all(s.active for s in dep.schedules)
    assert dep.parameters == {"project_dir": str(stack.root)} and dep.work_pool_name is None
    assert len(automations) == 1
    trigger, action = automations[0].trigger, automations[0].actions[0]
    assert trigger.expect == {"distillery.data.changed"}
    assert action.deployment_id == dep.id


def test_new_data_starts_a_run_through_the_trigger_and_it_trains(stack):
    run = stack.story.reach("new_data_run")
    assert run.state.is_completed(), f"{run.state}\n{stack.logs['serve'].read_text()[-3000:]}"
    markdown = next(a.data for a in artifacts_of(stack, run.id) if a.key == "distillery-retrain")
    assert "# Retraining check: changed: pipeline run" in markdown and "no champion yet" in markdown
    assert "Started by: automation" in markdown and "version 1 (new)" in markdown
    # The pipeline ran as a subflow, one task run per stage, each with its progress artifact.
    pipelines = flow_runs(stack, "distillery-pipeline")
    assert len(pipelines) == 1 and pipelines[0].state.is_completed()
    with stack.prefect() as c:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipelines[0].id])))
    from tasks.graph import stage_names

    stages = stage_names(stack.root)
    names = {t.name for t in tasks}
    assert names >= set(stages) and any(n.startswith("register") for n in names), names
    progress = {a.key: a for a in artifacts_of(stack, pipelines[0].id) if a.type == "progress"}
    assert set(progress) == {f"progress-{s.replace('_', '-')}" for s in stages}
    assert all(a.data == 100.0 for a in progress.values()), {k: a.data for k, a in progress.items()}
    assert progress["progress-distill"].description == "distill: ran"
    c = mlflow_client(stack.root)
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == "1"
    exp = c.get_experiment_by_name("distillery")
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`distillery.retrain` = 'pipeline'")
    assert len(parents) == 1 and parents[0].data.tags["registered_version"] == "1"
    # A fresh project: no champion, and DVC not even initialised before this run.
    assert parents[0].data.tags["distillery.retrain.reasons"] == \
        "no champion yet; dvc status: not up to date: (no DVC project yet)"


def test_a_run_with_nothing_changed_trains_nothing(stack):
    step = stack.story.reach("nothing_changed_run")
    run, before = step["run"], step["before"]
    c = mlflow_client(stack.root)
    exp = c.get_experiment_by_name("distillery")
    assert run.state.is_completed(), f"{run.state}\n{stack.logs['serve'].read_text()[-3000:]}"
    assert mtimes(stack.root, "models", "data", "reports") == before["files"]  # nothing trained, nothing rewritten
    assert {r.info.run_id for r in pipeline_runs(c, exp)} == before["runs"]  # no pipeline run at all
    assert [str(v.version) for v in c.search_model_versions(f"name='{NAME}'")] == before["versions"]
    assert len(flow_runs(stack, "distillery-pipeline")) == 1
    markdown = next(a.data for a in artifacts_of(stack, run.id) if a.key == "distillery-retrain")
    assert "# Retraining check: nothing to do" in markdown and "Started by: by hand" in markdown
    assert "`dvc status`: up to date" in markdown and "| no |" not in markdown
    checks = c.search_runs([exp.experiment_id], filter_string="tags.`distillery.retrain` = 'nothing_to_do'")
    assert len(checks) == 1 and checks[0].data.tags["champion_version"] == "1"
    assert checks[0].data.tags["prefect_flow_run_id"] == str(run.id)


def test_mlflow_ui_shows_the_registered_model_with_aliases_and_lineage(stack):
    stack.story.reach("new_data_run")
    base = f"http://127.0.0.1:{stack.mlflow_port}/api/2.0/mlflow"
    model = json.loads(get(f"{base}/registered-models/get?name={NAME}")[1])["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "1", "challenger": "1"}
    version = json.loads(get(f"{base}/model-versions/get?name={NAME}&version=1")[1])["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    from distillery.lineage import content_md5

    assert tags["data_md5_train"] == content_md5(stack.root / TRAIN)  # the new data, as DVC hashed it
    assert {"git_commit", "params_hash", "teacher", "prefect_flow_run_id", "gate_decision"} <= set(tags)


def test_ctrl_c_stops_serve_and_then_both_dashboards(stack):
    out = stack.story.reach("stopped")
    assert out["serve_rc"] in (0, 130)
    assert out["paused"] is True  # nothing serves it now: Prefect paused its schedule
    assert len(out["children"]) >= 2  # the MLflow and the Prefect server (and their workers)
    assert out["ui_rc"] == 0
    assert "stopping the dashboards" in stack.logs["ui"].read_text()
    assert not [p for p in out["children"] if alive(p)]
