"""The Distillery pipeline as a Prefect flow.

Reads top to bottom like the pipeline: each DVC stage runs as a Prefect task of the
same name *through DVC* (`dvc repro --single-item <stage>`), so there is one code
path and an unchanged stage is skipped by DVC, not retrained. The flow adds what DVC
cannot: MLflow tracking (one parent run, a nested run per stage), the registry step
with promotion, and a Prefect artifact with the stage table and the gate decision.
"""

from __future__ import annotations

import contextlib
import importlib
import logging

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from distillery.config import load_params
from distillery.report import gate_rows
from tasks import tracking
from tasks.common import STAGES, read_json, report_path
from tasks.register import register_model

STAGE_ERRORS_DIR = "errors"


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message carries the stage's own error."""


def stage_error_path(root: Path, params, stage: str) -> Path:
    return Path(root) / params.paths.reports_dir / STAGE_ERRORS_DIR / f"{stage}.txt"


def ensure_dvc(root: Path) -> None:
    """A project without `.dvc/` (e.g. a copied folder) is initialised, with git when present."""
    if (root / ".dvc").is_dir():
        return
    from dvc.repo import Repo

    Repo.init(str(root), no_scm=not (root / ".git").exists())
    print(f"dvc: initialised a DVC project in {root}")


def run_dvc_stage(root: Path, stage: str) -> bool:
    """Run one stage through DVC. Returns False when DVC skipped it as unchanged."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # DVC's own chatter ("git add dvc.lock", auto-staging hints) would be logged twice under
    # Prefect; each task reports ran/skipped itself and errors still surface.
    logging.getLogger("dvc").setLevel(logging.WARNING)

    try:
        # DVC resolves targets and stage paths against the process cwd, so run from the project
        # root (stages run one at a time in this flow; nothing else depends on cwd meanwhile).
        with contextlib.chdir(root), Repo(str(root)) as repo:
            return bool(repo.reproduce(targets=[f"dvc.yaml:{stage}"], single_item=True))
    except DvcException as exc:
        params = load_params(Path(root) / "params.yaml", check_files=False)
        err = stage_error_path(root, params, stage)
        detail = err.read_text().strip() if err.exists() else str(exc)
        raise StageFailed(f"stage {stage!r} failed: {detail}") from None


def stage_task(stage: str):
    @task(name=stage, task_run_name=stage)
    def _run(root: str) -> bool:
        ran = run_dvc_stage(Path(root), stage)
        get_run_logger().info("%s: %s", stage, "ran" if ran else "unchanged, skipped by DVC")
        return ran

    return _run


STAGE_TASKS = {s: stage_task(s) for s in STAGES}


@task(name="register", retries=2, retry_delay_seconds=5)
def register(root: str, parent_run_id: str, flow_run_id: str | None) -> dict:
    params = load_params(Path(root) / "params.yaml")
    client = tracking.client_for(Path(root), params)
    exp_id = tracking.experiment_id(client, Path(root), params)
    return register_model(Path(root), params, client, exp_id, parent_run_id, flow_run_id)


def stage_markdown(table: list[dict], gate: dict, registration: dict | None) -> str:
    head = "| stage | accuracy | macro-F1 | size MB | params | p50 ms | p95 ms | samples/s |\n|---|---|---|---|---|---|---|---|\n"
    rows = "".join(
        f"| {r['stage']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['size_mb']:.2f} | {r['params']:,} | "
        f"{r['latency_p50_ms']:.2f} | {r['latency_p95_ms']:.2f} | {r['throughput_sps']:.1f} |\n" for r in table)
    verdict = "PASSED" if gate["passed"] else "FAILED"
    checks = "| check | observed | threshold | result | detail |\n|---|---|---|---|---|\n" + "".join(
        f"| {r['name']} | {r['observed']} | {r['threshold']} | {r['status']} | {r['detail']} |\n"
        for r in gate_rows(gate))
    reg = ""
    if registration:
        reg = (f"\n## Registry\n\nversion {registration['version']}, aliases {', '.join(registration['aliases'])}"
               f"\n\n{registration['reason']}\n")
    return f"# Distillery pipeline\n\n{head}{rows}\n## Gate: {verdict}\n\n{checks}{reg}"


@flow(name="distillery-pipeline", log_prints=True)
def pipeline(project_dir: str = ".") -> dict:
    """Run every stage (DVC skips unchanged ones), track in MLflow, gate, register."""
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    ensure_dvc(root)
    client = tracking.client_for(root, params)
    exp_id = tracking.experiment_id(client, root, params)
    fr_id = flow_run.get_id()
    parent = tracking.start_parent_run(client, exp_id, f"pipeline-{flow_run.get_name() or 'local'}",
                                       {"prefect_flow_run_id": str(fr_id), "params_hash": params.section_hash()})
    ran: dict[str, bool] = {}
    try:
        for stage in STAGES:
            io = importlib.import_module(f"tasks.{stage}").io(params)
            ran[stage], status = True, "FAILED"
            try:
                ran[stage] = STAGE_TASKS[stage](str(root))
                status = "FINISHED"
            finally:  # a failed stage is logged too, with whatever report it left
                report_file = report_path(root, params, stage)
                tracking.log_stage_run(client, exp_id, parent, stage, ran=ran[stage],
                                       report=read_json(report_file) if report_file.exists() else None,
                                       params=tracking.section_params(params, io.params),
                                       artifacts=[root / m for m in io.metrics], status=status)
        thresholds = read_json(report_path(root, params, "gate"))
        summary = read_json(report_path(root, params, "evaluate"))
        client.set_tag(parent, "gate_passed", str(thresholds["passed"]).lower())
        tracking.log_gate_checks(client, parent, thresholds["checks"])
        registration = register(str(root), parent, str(fr_id) if fr_id else None)
        # The full decision: the thresholds plus the champion comparison made at registration.
        gate = registration["decision"]
        logged = {c["name"] for c in thresholds["checks"]}
        tracking.log_gate_checks(client, parent, [c for c in gate["checks"] if c["name"] not in logged])
        client.set_tag(parent, "gate_passed", str(gate["passed"]).lower())
        client.set_tag(parent, "registered_version", registration["version"])
        client.set_tag(parent, "promoted", str(registration["promoted"]).lower())
        create_markdown_artifact(stage_markdown(summary["table"], gate, registration),
                                 key="distillery-pipeline", description="Stage table and gate decision")
        client.set_terminated(parent, status="FINISHED")
    except BaseException as exc:
        client.set_tag(parent, "failure", str(exc)[:4000])
        client.set_terminated(parent, status="FAILED")
        raise
    return {"ran": ran, "table": summary["table"], "gate": gate, "registration": registration,
            "mlflow_run_id": parent, "flow_run_id": str(fr_id) if fr_id else None}
