"""MLflow tracking: the store, one parent run per pipeline run, one nested run per stage.

All calls go through an explicit MlflowClient and run ids (no global "active run"),
so they behave the same whichever thread Prefect runs a task in. A stage that DVC
skipped is still logged, from its metrics file, with tag `dvc_skipped=true`.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from distillery.config import Params
from distillery.errors import DistilleryError

STAGE_TAG = "distillery.stage"
# On each parent run: which process on which machine runs it, for which project. A run left
# RUNNING whose process is gone was killed; the next run of the project closes it.
PID_TAG, HOST_TAG, PROJECT_TAG = "distillery.pid", "distillery.host", "distillery.project"


def tracking_uri(root: Path, params: Params) -> str:
    return params.register.tracking_uri or f"sqlite:///{(Path(root) / 'mlruns' / 'mlflow.db').resolve()}"


def artifact_root(uri: str) -> str:
    """Artifacts of a SQLite store live beside its database, so projects sharing it share them too."""
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()


def client_for(root: Path, params: Params):
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(root, params)
    bound_http_retries(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    from tasks.promotion import registry_lock

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    # Opening the store creates and migrates the database; two runs doing it at once on a shared
    # store race (duplicate tables and indexes), so it happens under the registry's lock.
    with registry_lock(uri):
        if not db.exists():
            _create_sqlite_store(db)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def _create_sqlite_store(db: Path) -> None:
    """A new MLflow database, created beside its place and moved there complete: a run killed while
    MLflow creates its tables (dozens of migrations, seconds) must not leave a half-made schema that
    every later run fails on ("table ... already exists"). Caller holds the registry lock."""
    from mlflow import MlflowClient

    tmp = db.with_name(f"{db.name}.creating")
    tmp.unlink(missing_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}", registry_uri=f"sqlite:///{tmp}")
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)
    os.replace(tmp, db)


def experiment_id(client, root: Path, params: Params) -> str:
    from mlflow.exceptions import MlflowException

    name = params.register.experiment
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = tracking_uri(root, params)
    location = artifact_root(uri) if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another run sharing this store created it a moment ago
        return client.get_experiment_by_name(name).experiment_id


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def numeric_metrics(report: dict) -> dict[str, float]:
    """Every number in a stage report (bools and lists excluded), with dotted keys."""
    return {k: float(v) for k, v in flatten(report).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def section_params(params: Params, keys: list[str]) -> dict[str, str]:
    """The params a stage depends on (as dvc.yaml declares them), flattened for MLflow."""
    d = params.as_dict()
    out = {}
    for key in keys:
        node = d
        for part in key.split("."):
            node = node[part]
        out.update(flatten({key: node}) if isinstance(node, dict) else {key: node})
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in out.items()}


def start_parent_run(client, exp_id: str, run_name: str, tags: dict) -> str:
    return client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def process_tags(root: Path) -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), PROJECT_TAG: str(Path(root).resolve())}


def _process_alive(pid: int, started_ms: int) -> bool:
    """Is the process that started a run at `started_ms` still there (and not a reused pid)?"""
    import psutil

    try:
        return psutil.Process(pid).create_time() * 1000 <= started_ms + 1000
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def close_interrupted_runs(client, exp_id: str, root: Path) -> list[str]:
    """Mark KILLED the runs of this project that a killed pipeline left RUNNING on this machine
    (its parent run, and any nested run it had open), and their Prefect flow runs Crashed."""
    project = str(Path(root).resolve()).replace("'", "\\'")
    stale = [r for r in client.search_runs([exp_id], filter_string=(
                 f"attributes.status = 'RUNNING' and tags.`{PROJECT_TAG}` = '{project}'"), max_results=100)
             if r.data.tags.get(HOST_TAG) == socket.gethostname()
             and not _process_alive(int(r.data.tags.get(PID_TAG, "0") or 0), r.info.start_time)]
    closed = []
    for run in stale:
        rid = run.info.run_id
        reason = (f"interrupted: process {run.data.tags.get(PID_TAG)} ended without closing this run "
                  "(killed?); closed by the next run of the project")
        for child in client.search_runs([exp_id], filter_string=(
                f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{rid}'")):
            client.set_terminated(child.info.run_id, status="KILLED")
        client.set_tag(rid, "failure", reason)
        client.set_terminated(rid, status="KILLED")
        _crash_flow_run(run.data.tags.get("prefect_flow_run_id"), reason)
        closed.append(rid)
    return closed


def _crash_flow_run(flow_run_id: str | None, reason: str) -> None:
    """The killed run's Prefect flow run stays Running for ever otherwise (nobody reports its end)."""
    if not flow_run_id or flow_run_id == "None":
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as c:
            fr = c.read_flow_run(UUID(flow_run_id))
            if fr.state is not None and not fr.state.is_final():
                c.set_flow_run_state(fr.id, Crashed(message=reason), force=True)
    except Exception as exc:  # another Prefect server, or the run is gone: the MLflow record suffices
        print(f"tracking: could not mark Prefect flow run {flow_run_id} crashed: {exc}")


def log_stage_run(client, exp_id: str, parent_run_id: str, stage: str, *, ran: bool, report: dict | None,
                  params: dict[str, str], artifacts: list[Path], status: str = "FINISHED") -> str:
    """One nested run for a stage, with its params, figures and report files."""
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(exp_id, run_name=stage, tags={
        "mlflow.parentRunId": parent_run_id, STAGE_TAG: stage, "dvc_skipped": str(not ran).lower()})
    rid = run.info.run_id
    metrics = numeric_metrics(report or {})
    ts = run.info.start_time
    client.log_batch(rid, metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()],
                     params=[Param(k, v[:6000]) for k, v in params.items()],
                     tags=[RunTag("distillery.ran", str(ran).lower())])
    for path in map(Path, artifacts):
        if path.is_dir():  # a report folder, e.g. the validation's Data Docs
            client.log_artifacts(rid, str(path), artifact_path=path.name)
        elif path.exists():
            client.log_artifact(rid, str(path))
    client.set_terminated(rid, status=status)
    # The parent run carries every stage's figures too, prefixed by stage, so runs compare in one table.
    parent_metrics = {f"{stage}.{k}": v for k, v in metrics.items() if "." not in k}
    if parent_metrics:
        client.log_batch(parent_run_id, metrics=[Metric(k, v, ts, 0) for k, v in parent_metrics.items()])
    return rid


def log_gate_checks(client, run_id: str, checks: list[dict]) -> None:
    """Each gate check as tag `gate.<check>` (pass / fail / skipped) and metric `gate.<check>.observed`
    (NaN when nothing was observed), so every check is visible, and comparable across runs, in MLflow."""
    import time

    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    tags = [RunTag(f"gate.{c['name']}", c.get("status") or ("pass" if c["passed"] else "fail")) for c in checks]
    # A check that observed nothing (skipped: no champion yet) logs NaN, so every run has the same
    # metric names and runs compare column by column across retrainings.
    metrics = [Metric(f"gate.{c['name']}.observed", float("nan") if c["observed"] is None else float(c["observed"]),
                      ts, 0) for c in checks]
    # Paired comparisons (the champion's always, NaN before there is one): the difference, its
    # interval and McNemar's p; and which rule decided.
    for c in checks:
        comp = c.get("comparison")
        if comp is None and c["name"] != "regression_vs_champion":
            continue
        values = {"difference": None, "ci_low": None, "ci_high": None} if comp is None else comp
        for k in ("difference", "ci_low", "ci_high"):
            metrics.append(Metric(f"gate.{c['name']}.{k}", float("nan") if values[k] is None else float(values[k]),
                                  ts, 0))
        metrics.append(Metric(f"gate.{c['name']}.mcnemar_p",
                              float("nan") if comp is None else float(comp["mcnemar"]["p_value"]), ts, 0))
        if c.get("rule"):
            tags.append(RunTag(f"gate.{c['name']}.rule", c["rule"]))
    client.log_batch(run_id, metrics=metrics, tags=tags)


class RegistryUnavailable(DistilleryError, RuntimeError):
    """The MLflow tracking server could not be reached, after bounded retries; the message names it."""


# How a refused or dropped connection reads once MLflow has wrapped it (it re-raises as a plain
# MlflowException, the requests error kept only as context).
_CONNECTION_SIGNS = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                     "Connection aborted", "RemoteDisconnected", "Connection reset", "ConnectionError")


def is_connection_error(exc: BaseException) -> bool:
    """A store that is down or restarting (worth retrying), as opposed to a request it refused
    (a validation or permission error: retrying cannot help)."""
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError)):
            return True
        if type(exc).__name__ == "MlflowException" and any(s in str(exc) for s in _CONNECTION_SIGNS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def bound_http_retries(uri: str) -> None:
    """MLflow retries each HTTP request 7 times with doubling waits (about 4 minutes); Distillery
    retries whole registry steps instead (`with_store_retries`), so each request gives up sooner.
    An explicit MLFLOW_HTTP_REQUEST_* setting wins."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


def with_store_retries(fn, uri: str, attempts: int, backoff_s: float, what: str):
    """Run `fn` (safe to repeat: registration recovers its own interrupted attempt), retrying only
    on connection errors, waiting backoff_s, 2*backoff_s, ... in between; then a clear failure."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            short = " ".join(str(exc).split())[:300]
            if attempt >= attempts:
                raise RegistryUnavailable(
                    f"MLflow tracking server {uri} unreachable: {what} failed {attempts} time(s), last: {short}. "
                    "The models and reports are on disk; run again once the server is back "
                    "(the registration is then completed exactly once)") from exc
            delay = backoff_s * 2 ** (attempt - 1)
            print(f"registry: {uri} unreachable during {what} (attempt {attempt}/{attempts}); "
                  f"retrying in {delay:.0f} s: {short}")
            time.sleep(delay)
    raise AssertionError("unreachable")
