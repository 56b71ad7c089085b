"""The Distillery pipeline as a Prefect flow.

Reads top to bottom like the pipeline: each stage of dvc.yaml, in its order (tasks/graph.py), runs
as a Prefect task of the same name *through DVC* (`dvc repro --single-item <stage>`), so there is
one code path and an unchanged stage is skipped by DVC, not retrained. The flow adds what DVC
cannot: MLflow tracking (one parent run, a nested run per stage), the registry step
with promotion, and Prefect artifacts with the validation summary, the stage table and
the gate decision. It also guards what DVC cannot see: the text-length drift against the
champion's data, and that the data a training stage reads is exactly what was validated.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from distillery.config import PARAMS_FILE, load_params
from distillery.env import IN_FLOW_ENV
from distillery.errors import DistilleryError
from distillery.interrupts import Interrupted, clear_stale_dvc_locks, deferred, exit_code_for_stage
from distillery.lineage import changed_since_validation
from distillery.report import COLUMNS, format_figure, gate_rows
from flows.progress import stage_progress
from tasks import tracking
from tasks.common import read_json, report_path
from tasks.graph import stage_graph
from tasks.register import register_model
from tasks.run_report import markdown_link, write_run_report
from tasks.storage import RemoteError, describe_remote, push_outputs
from tasks.validate import length_shift

STAGE_ERRORS_DIR = "errors"


class StageFailed(DistilleryError, RuntimeError):
    """A DVC stage exited non-zero; the message carries the stage's own error."""


def stage_error_path(root: Path, params, stage: str) -> Path:
    return Path(root) / params.paths.reports_dir / STAGE_ERRORS_DIR / f"{stage}.txt"


def ensure_dvc(root: Path) -> None:
    """A project without `.dvc/` (e.g. a copied folder) is initialised, with git when present.

    DVC rewrites dvc.lock in place (not atomically): a run killed during that write leaves a
    file DVC cannot parse. It is set aside, so every stage runs again rather than none.
    """
    lock = root / "dvc.lock"
    if lock.exists():
        import yaml

        try:
            ok = isinstance(yaml.safe_load(lock.read_text()) or {}, dict)
        except (yaml.YAMLError, UnicodeDecodeError):
            ok = False
        if not ok:
            aside = lock.with_name(f"dvc.lock.corrupt-{os.getpid()}")
            os.replace(lock, aside)
            print(f"dvc: {lock.name} was unreadable (a run killed while DVC wrote it?); moved to {aside.name}, "
                  "so every stage runs again")
    if (root / ".dvc").is_dir():
        for line in clear_stale_dvc_locks(root):
            print(line)
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
        signum = _stage_signal(exc)
        if signum is not None:  # the stage command was stopped by SIGINT / SIGTERM (Ctrl-C to the group)
            raise Interrupted(signum) from None
        params = load_params(Path(root) / PARAMS_FILE, check_files=False)
        err = stage_error_path(root, params, stage)
        detail = err.read_text().strip() if err.exists() else " ".join(str(exc).split())
        raise StageFailed(f"stage {stage!r} failed: {detail}") from None


def _stage_signal(exc: BaseException) -> int | None:
    """The signal that ended DVC's stage command ("... exited with -15" / 143), if one did. DVC
    ignores SIGINT in this process while the command runs, so Ctrl-C shows up only this way."""
    import re

    while exc is not None:
        found = re.search(r"exited with (-?\d+)", str(exc))
        if found:
            return exit_code_for_stage(int(found.group(1)))
        exc = exc.__cause__ or exc.__context__
    return None


def check_stage_inputs(root: Path, params, stage: str, deps: tuple[str, ...]) -> None:
    """Before a stage that reads the validated data: are the data files still those the validate
    stage passed (their DVC hashes against dvc.lock)? Checked here, before DVC would delete the
    stage's earlier outputs. It only refuses: whether a stage runs is DVC's decision alone."""
    if params.paths.validated_dir in deps:
        changed = changed_since_validation(root, params)
        if changed:
            raise StageFailed(f"stage {stage!r} not started: {'; '.join(changed)}; nothing was trained on it. "
                              "Run again to validate the new data first")


@functools.cache
def stage_task(stage: str):
    """The Prefect task of a stage (made once per name): the stage through DVC."""
    @task(name=stage, task_run_name=stage)
    def _run(root: str) -> bool:
        with stage_progress(stage) as progress:  # the stage's training loops, shown in the Prefect UI
            ran = run_dvc_stage(Path(root), stage)
            progress["result"] = "ran" if ran else "unchanged, skipped by DVC"
        get_run_logger().info("%s: %s", stage, "ran" if ran else "unchanged, skipped by DVC")
        return ran

    return _run


def publish_validation(report: dict, shift: dict | None) -> None:
    """The validation summary as a Prefect artifact, whatever the outcome."""
    from distillery.validation import summary_markdown

    create_markdown_artifact(summary_markdown(report, shift, report.get("docs")), key="distillery-validation",
                             description="Data validation: failed checks, files, rows")


def gate_inputs_before_training(root: Path, params, client, new_task_reason: str | None) -> None:
    """What the gate will need, checked before any training: the champion is of this run's task
    (or --new-task says why not), every slice selects eval rows, the must-pass suite is usable."""
    from distillery.slices import SliceError
    from distillery.suite import SuiteError
    from tasks.task_identity import TaskMismatch, check_slices, check_suite, check_task_identity

    try:
        identity = check_task_identity(root, params, client, new_task_reason)
        rows = check_slices(root, params)
        check_suite(root, params)
    except (TaskMismatch, SliceError, SuiteError) as exc:
        raise StageFailed(f"not started: {exc}") from None
    if identity["new_task"]:
        print(f"task: new task replaces champion v{identity['champion']}: {new_task_reason}")
    if rows:
        print("slices: " + ", ".join(f"{k} {n} eval rows" for k, n in rows.items()))


@task(name="register")
def register(root: str, parent_run_id: str, flow_run_id: str | None, new_task_reason: str | None = None) -> dict:
    """Retried only when the store cannot be reached (register.retries, doubling waits); a request the
    store refuses fails at once. A retry settles its own interrupted attempt first (see register_model)."""
    params = load_params(Path(root) / PARAMS_FILE)
    cfg = params.register

    def attempt() -> dict:
        client = tracking.client_for(Path(root), params)
        exp_id = tracking.experiment_id(client, Path(root), params)
        return register_model(Path(root), params, client, exp_id, parent_run_id, flow_run_id, new_task_reason)

    return tracking.with_store_retries(attempt, tracking.tracking_uri(Path(root), params), cfg.retries,
                                       cfg.retry_backoff_s, "registration")


@task(name="push", retries=2, retry_delay_seconds=5)
def push(root: str, remote: str | None) -> dict:
    """The run's DVC outputs to the remote (I/O: retried), so another clone can `distillery pull` them."""
    return push_outputs(Path(root), remote)


def push_to_remote(root: Path, params, client, parent_run_id: str) -> dict | None:
    """After a successful run: push, unless `remote.push` is off. No remote configured is said
    loudly (a warning, the run stands); a push that fails fails the run, naming the remote."""
    if not params.remote.push:
        return None
    if params.remote.name is None and describe_remote(root, None) is None:
        get_run_logger().warning("dvc push: skipped: no DVC remote configured (remote.push is on): add one with "
                                 "`dvc remote add -d NAME URL`, or set remote.push: false")
        client.set_tag(parent_run_id, "dvc_push", "skipped: no remote configured")
        return None
    try:
        pushed = push(str(root), params.remote.name)
    except RemoteError as exc:
        client.set_tag(parent_run_id, "dvc_push", f"failed: {exc}"[:4000])
        raise RemoteError(f"{exc}. The run itself succeeded and is registered; push it later with "
                          "`dvc push` once the remote is reachable") from None
    print(f"dvc push: {pushed['files']} file(s) to remote {pushed['remote']!r} ({pushed['url']})")
    client.set_tag(parent_run_id, "dvc_push", f"{pushed['files']} file(s) to {pushed['remote']} ({pushed['url']})")
    return pushed


def publish_report(root: Path, params, client, parent_run_id: str) -> str:
    """Write the run report (reports/index.html), log it to the parent run, and return the markdown
    that links it. A report that cannot be written does not change the run's outcome: it is said here."""
    try:
        return markdown_link(write_run_report(root, params, client, parent_run_id))
    except Exception as exc:
        print(f"report: not written: {exc}")
        client.set_tag(parent_run_id, "report_error", str(exc)[:4000])
        return f"\n## Run report\n\nnot written: {exc}\n"


def stage_markdown(table: list[dict], gate: dict, registration: dict | None) -> str:
    headers = ["stage", *(h for _, h, _ in COLUMNS), "vs teacher (CI)", "fidelity"]  # the console table's columns
    head = "| " + " | ".join(headers) + " |\n" + "|---" * len(headers) + "|\n"

    def compared(r) -> list[str]:  # a stage measured against the teacher (evaluate's rows) has both
        c = r.get("vs_teacher")
        if "fidelity" not in r:
            return ["-", "-"]
        vs = "-" if not c else f"{c['difference']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
        return [vs, f"{r['fidelity']:.4f}"]

    rows = "".join("| " + " | ".join([r["stage"], *(format_figure(f, r.get(k)) for k, _, f in COLUMNS), *compared(r)])
                   + " |\n" for r in table)
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
def pipeline(project_dir: str = ".", new_task_reason: str | None = None) -> dict:
    """Run every stage (DVC skips unchanged ones), track in MLflow, gate, register."""
    root = Path(project_dir).resolve()
    params = load_params(root / PARAMS_FILE)
    ensure_dvc(root)
    graph = stage_graph(root)  # dvc.yaml: the stages, in order, and what each reads and writes
    client = tracking.client_for(root, params)
    exp_id = tracking.experiment_id(client, root, params)
    for run_id in tracking.close_interrupted_runs(client, exp_id, root):
        print(f"mlflow: run {run_id} of an interrupted pipeline run marked KILLED")
    fr_id = flow_run.get_id()
    parent = tracking.start_parent_run(client, exp_id, f"pipeline-{flow_run.get_name() or 'local'}",
                                       {"prefect_flow_run_id": str(fr_id), "params_hash": params.section_hash(),
                                        **tracking.process_tags(root)})
    ran: dict[str, bool] = {}
    in_flow = os.environ.get(IN_FLOW_ENV)
    os.environ[IN_FLOW_ENV] = "1"  # stages leave their expected errors to this flow to report, once
    api_env = os.environ.get("PREFECT_API_URL")
    if api_env is None:  # a stage that runs a flow of its own (soft_targets on Dask) reports to this API,
        from prefect.client.orchestration import get_client  # rather than start a server of its own

        with get_client(sync_client=True) as prefect_client:
            os.environ["PREFECT_API_URL"] = str(prefect_client.api_url)
    try:
        for stage, io in graph.items():
            ran[stage], status, extra = False, "FAILED", {}
            try:
                check_stage_inputs(root, params, stage, io.deps)
                ran[stage] = True  # until DVC says it skipped the stage
                ran[stage] = stage_task(stage)(str(root))
                if stage == "validate":
                    extra["length_shift"] = shift = length_shift(root, params, client)
                    print(f"validate: text length vs the champion's data: {shift['status']}: {shift['reason']}")
                    client.set_tag(parent, "length_shift", f"{shift['status']}: {shift['reason']}"[:4000])
                    if shift["status"] == "failed":
                        raise StageFailed(f"stage 'validate' failed: text length shift {shift['reason']}")
                    gate_inputs_before_training(root, params, client, new_task_reason)
                status = "FINISHED"
            finally:  # a failed stage is logged too, with whatever report it left
                report_file = report_path(root, params, stage)
                report = read_json(report_file) if report_file.exists() else None
                if stage == "validate" and report is not None:
                    publish_validation(report, extra.get("length_shift"))
                reports = [o for o in io.outs if o.startswith(f"{params.paths.reports_dir}/")]
                tracking.log_stage_run(client, exp_id, parent, stage, ran=ran[stage],
                                       report={**report, **extra} if report is not None else None,
                                       params=tracking.section_params(params, list(io.params)),
                                       artifacts=[root / m for m in (*io.metrics, *reports)], status=status)
        thresholds = read_json(report_path(root, params, "gate"))
        summary = read_json(report_path(root, params, "evaluate"))
        client.set_tag(parent, "gate_passed", str(thresholds["passed"]).lower())
        tracking.log_gate_checks(client, parent, thresholds["checks"])
        check_stage_inputs(root, params, "register", (params.paths.validated_dir,))  # it re-scores the champion on eval
        with deferred():  # a registry write is one transaction: a signal waits for its end (seconds)
            registration = register(str(root), parent, str(fr_id) if fr_id else None, new_task_reason)
        # The full decision: the thresholds plus the champion comparison made at registration.
        gate = registration["decision"]
        logged = {c["name"] for c in thresholds["checks"]}
        tracking.log_gate_checks(client, parent, [c for c in gate["checks"] if c["name"] not in logged])
        client.set_tag(parent, "gate_passed", str(gate["passed"]).lower())
        client.set_tag(parent, "registered_version", registration["version"])
        client.set_tag(parent, "promoted", str(registration["promoted"]).lower())
        create_markdown_artifact(stage_markdown(summary["table"], gate, registration)
                                 + publish_report(root, params, client, parent),
                                 key="distillery-pipeline", description="Stage table, gate decision, run report")
        client.set_terminated(parent, status="FINISHED")
    except BaseException as exc:
        from prefect.exceptions import TerminationSignal  # Prefect's form of SIGTERM inside a flow

        stopped = isinstance(exc, (Interrupted, KeyboardInterrupt, TerminationSignal))
        if isinstance(exc, TerminationSignal):
            reason = str(Interrupted(exc.signal))
        else:
            reason = str(exc) or ("interrupted by SIGINT" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
        client.set_tag(parent, "failure", reason[:4000])
        if isinstance(exc, Exception):  # not on Ctrl-C: the user wants it to stop
            try:  # the failure itself is what the caller must see, whatever happens here
                create_markdown_artifact(f"# Distillery pipeline: FAILED\n\n{exc}\n"
                                         + publish_report(root, params, client, parent),
                                         key="distillery-pipeline", description="The failure and the run report")
            except Exception as artifact_exc:
                print(f"report: Prefect artifact not created: {artifact_exc}")
        client.set_terminated(parent, status="KILLED" if stopped else "FAILED")
        raise
    finally:
        if api_env is None:
            os.environ.pop("PREFECT_API_URL", None)
        if in_flow is None:
            os.environ.pop(IN_FLOW_ENV, None)
        else:
            os.environ[IN_FLOW_ENV] = in_flow
    pushed = push_to_remote(root, params, client, parent)
    return {"ran": ran, "pushed": pushed, "table": summary["table"], "gate": gate, "registration": registration,
            "mlflow_run_id": parent, "flow_run_id": str(fr_id) if fr_id else None}
