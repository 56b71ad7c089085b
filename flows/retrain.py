"""Scheduled retraining: the flow a schedule or a new-data event starts.

It first asks whether anything changed since the champion was trained: DVC's hash of the train
and eval files and the params hash against the champion's lineage tags (both sides from
distillery/lineage.py), and `dvc status` (a stage whose inputs, params or outputs differ from
dvc.lock). If nothing changed it trains
nothing and records the check: a Prefect artifact and an MLflow run tagged
`distillery.retrain=nothing_to_do`. Otherwise it runs the pipeline (a subflow; DVC re-runs only
what changed) and the gate decides what happens to the new model.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from distillery.config import PARAMS_FILE, load_params
from distillery.env import configure_environment
from distillery.lineage import current_data_identity
from flows.pipeline import pipeline
from tasks import tracking
from tasks.register import _champion

RETRAIN_TAG = "distillery.retrain"  # on MLflow runs: nothing_to_do (the check's run) or pipeline (its parent run)
ARTIFACT_KEY = "distillery-retrain"


def current_lineage(root: Path, params) -> dict[str, str]:
    """What the champion's lineage tags would say if it were trained now (the same keys and hashes
    as the registry's lineage tags: distillery/lineage.py)."""
    return {**current_data_identity(root, params), "params_hash": params.section_hash()}


def dvc_stale_stages(root: Path) -> list[str]:
    """Stages `dvc status` reports as not up to date (changed deps, params or outs, or never run)."""
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)
    if not (root / ".dvc").is_dir():
        return ["(no DVC project yet)"]
    with contextlib.chdir(root), Repo(str(root)) as repo:  # DVC resolves paths against the cwd
        return sorted(name.split(":")[-1] for name in repo.status())


def compare_with_champion(champion_tags: dict | None, now: dict[str, str], stale: list[str]) -> dict:
    """The decision: changed or not, with one reason per difference, and the compared values."""
    checks = [{"what": k, "champion": (champion_tags or {}).get(k), "now": v,
               "same": champion_tags is not None and champion_tags.get(k) == v} for k, v in now.items()]
    reasons = ["no champion yet"] if champion_tags is None else [
        f"{c['what']}: {c['champion'] or 'not recorded'} -> {c['now']}" for c in checks if not c["same"]]
    if stale:
        reasons.append(f"dvc status: not up to date: {', '.join(stale)}")
    return {"changed": bool(reasons), "reasons": reasons, "checks": checks, "dvc_stale": stale}


@task(name="check-changes")
def check_changes(root: str) -> dict:
    """Has the data or the params changed since the champion was trained?"""
    root_path = Path(root)
    params = load_params(root_path / PARAMS_FILE)
    client = tracking.client_for(root_path, params)
    champ = _champion(client, params.register.model_name)
    result = compare_with_champion(None if champ is None else dict(champ.tags), current_lineage(root_path, params),
                                   dvc_stale_stages(root_path))
    return {**result, "champion_version": None if champ is None else str(champ.version)}


def how_started() -> str:
    """schedule, automation (a data-change event), or by hand: read from this flow run's record."""
    from prefect.client.orchestration import get_client

    run_id = flow_run.get_id()
    if not run_id:
        return "direct call"
    with get_client(sync_client=True) as c:
        run = c.read_flow_run(run_id)
    if run.auto_scheduled:
        return "schedule"
    if run.created_by is not None and str(run.created_by.type).upper().endswith("AUTOMATION"):
        return f"automation {run.created_by.display_value or ''}".strip()
    return "by hand" if run.deployment_id else "direct call"


def record_nothing_to_do(root: Path, check: dict, started_by: str) -> str:
    """An MLflow run that says this check happened and trained nothing (no metrics, only tags)."""
    params = load_params(root / PARAMS_FILE, check_files=False)
    client = tracking.client_for(root, params)
    exp_id = tracking.experiment_id(client, root, params)
    tags = {RETRAIN_TAG: "nothing_to_do", "distillery.retrain.started_by": started_by,
            "champion_version": check["champion_version"] or "none",
            "prefect_flow_run_id": str(flow_run.get_id() or "none"),
            **{f"now.{c['what']}": c["now"] for c in check["checks"]}}
    run = client.create_run(exp_id, run_name=f"retrain-check-{flow_run.get_name() or 'local'}", tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def retrain_markdown(check: dict, started_by: str, outcome: str) -> str:
    champion = f"champion v{check['champion_version']}" if check["champion_version"] else "champion (none)"
    rows = "".join(f"| {c['what']} | {c['champion'] or '-'} | {c['now']} | {'yes' if c['same'] else 'no'} |\n"
                   for c in check["checks"])
    reasons = "".join(f"- {r}\n" for r in check["reasons"]) or "- nothing changed\n"
    verdict = "changed: pipeline run" if check["changed"] else "nothing to do"
    return (f"# Retraining check: {verdict}\n\nStarted by: {started_by}\n\n| what | {champion} | now | same |\n"
            f"|---|---|---|---|\n{rows}\n`dvc status`: {', '.join(check['dvc_stale']) or 'up to date'}\n\n"
            f"## Reasons\n\n{reasons}\n## Outcome\n\n{outcome}\n")


@flow(name="distillery-retrain", log_prints=True)
def retrain(project_dir: str = ".") -> dict:
    """Run the pipeline if data or params changed since the champion was trained; else record that."""
    root = Path(project_dir).resolve()
    configure_environment(root)
    started_by = how_started()
    check = check_changes(str(root))
    if not check["changed"]:
        run_id = record_nothing_to_do(root, check, started_by)
        outcome = (f"nothing trained: data and params are those of champion v{check['champion_version']} "
                   f"and every DVC stage is up to date (MLflow run {run_id})")
        print(f"retrain: {outcome}")
        create_markdown_artifact(retrain_markdown(check, started_by, outcome), key=ARTIFACT_KEY,
                                 description="Retraining check: nothing to do")
        return {"action": "nothing_to_do", "check": check, "mlflow_run_id": run_id, "started_by": started_by}
    print(f"retrain: changed since the champion: {'; '.join(check['reasons'])}")
    result = pipeline(project_dir=str(root))
    reg = result["registration"]
    params = load_params(root / PARAMS_FILE, check_files=False)
    client = tracking.client_for(root, params)
    for key, value in {RETRAIN_TAG: "pipeline", "distillery.retrain.started_by": started_by,
                       "distillery.retrain.reasons": "; ".join(check["reasons"])[:4000]}.items():
        client.set_tag(result["mlflow_run_id"], key, value)
    outcome = (f"pipeline ran: version {reg['version']} ({'new' if reg['new_version'] else 'unchanged model'}), "
               f"gate {'passed' if result['gate']['passed'] else 'FAILED'}; {reg['reason']}")
    create_markdown_artifact(retrain_markdown(check, started_by, outcome), key=ARTIFACT_KEY,
                             description="Retraining check: pipeline run")
    return {"action": "pipeline", "check": check, "mlflow_run_id": result["mlflow_run_id"],
            "started_by": started_by, "registration": reg}
