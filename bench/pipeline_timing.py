"""Pipeline figures: wall time of the whole run and of each stage, the share that is not model
compute, and the wall time of a second run with nothing changed.

- Whole run: wall clock around `flows.pipeline.pipeline(project_dir=...)` in this process, on a
  fresh project: Prefect's temporary server start, every stage, MLflow tracking, the registry.
- Each stage: its Prefect task run (start to end), i.e. the `dvc repro --single-item` call:
  DVC's checks and caching, the `distillery stage NAME` process (interpreter and library
  start-up, data loading, the stage's work, its report). `register` likewise.
- Model compute: the seconds the stage reports say they spent computing (COMPUTE_KEYS, e.g.
  `train.seconds`, `logits_seconds`). A stage that does not report its measurement time gets
  the time the benchmark's own identical measurement of the same model took (marked
  "estimated"). Everything else is "outside model compute": orchestration, tracking,
  validation, DVC, start-up, loading and saving, and any compute a stage does not report.
- No-change rerun: `distillery --project-dir WORK run` in a fresh process (what a user types),
  timed from process start to exit, checked to have rewritten no model file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.tracking import flatten

# Report keys (dotted, as MLflow logs them) that hold seconds of model compute.
COMPUTE_KEYS = ("train.seconds", "logits_seconds", "augment_seconds", "build_seconds", "importance_seconds",
                "export_seconds", "quantize_seconds", "measure_seconds")
# The benchmark row that re-measures the model a stage measures (same function, same data).
STAGE_ROWS = {"teacher": "A", "distill": "E-distill", "prune": "E-prune", "quantize": "E-quantize"}


def run_first(work: Path) -> dict:
    """The full pipeline through the real Prefect flow, timed."""
    from flows.pipeline import pipeline

    start = time.perf_counter()
    result = pipeline(project_dir=str(work))
    wall = time.perf_counter() - start
    reg = result["registration"]
    return {"wall_seconds": wall, "ran": result["ran"], "flow_run_id": result["flow_run_id"],
            "gate_passed": result["gate"]["passed"],
            "registration": {k: reg.get(k) for k in ("version", "new_version", "promoted", "reason")}}


def task_walls(flow_run_id: str, stages: list[str]) -> dict[str, float]:
    """Wall seconds of each task run of the flow run, by task name (stages and register)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    walls = {}
    for r in runs:
        if r.start_time and r.end_time:
            name = r.name if r.name in stages else r.name.rsplit("-", 1)[0]  # "register-3f2" -> "register"
            walls[name] = (r.end_time - r.start_time).total_seconds()
    return walls


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def rerun_unchanged(work: Path, log_file: Path) -> dict:
    """A second `distillery run` with nothing changed, as a user starts it: a fresh process."""
    watched = [work / "models", work / "data"]
    before = {k: v for d in watched for k, v in _mtimes(d).items()}
    env = {**os.environ, "PREFECT_HOME": str(work / ".prefect"), "COLUMNS": "160"}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log:
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "distillery_cli", "--project-dir", str(work), "run"],
                           cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    after = {k: v for d in watched for k, v in _mtimes(d).items()}
    if r.returncode != 0:
        raise RuntimeError(f"no-change rerun failed (exit {r.returncode}); see {log_file}")
    return {"wall_seconds": wall, "trained_nothing": before == after, "log": str(log_file)}


def stage_compute(report: dict) -> dict[str, float]:
    flat = flatten(report or {})
    return {k: float(flat[k]) for k in COMPUTE_KEYS
            if isinstance(flat.get(k), (int, float)) and not isinstance(flat.get(k), bool)}


def pipeline_figures(first: dict, walls: dict[str, float], reports: dict[str, dict],
                     bench_measure_seconds: dict[str, float], rerun: dict) -> dict:
    """Per-stage and whole-run figures, and the share outside model compute."""
    stages, compute_reported, compute_total = [], 0.0, 0.0
    for stage in first["ran"]:  # the flow's stages, in dvc.yaml's order
        parts = stage_compute(reports.get(stage, {}))
        estimated = None
        if "measure_seconds" not in parts and stage in STAGE_ROWS:
            estimated = bench_measure_seconds.get(STAGE_ROWS[stage])
        reported = sum(parts.values())
        compute = reported + (estimated or 0.0)
        wall, ran = walls.get(stage), first["ran"].get(stage)
        if ran:
            compute_reported += reported
            compute_total += compute
        else:  # skipped by DVC: its report describes an earlier run, and this run computed nothing
            compute, parts, estimated = 0.0, {}, None
        stages.append({"stage": stage, "ran": ran, "wall_seconds": wall, "compute_seconds": compute,
                       "compute_reported": parts, "measure_seconds_estimated": estimated,
                       "outside_compute_seconds": None if wall is None else wall - compute})
    whole = first["wall_seconds"]
    in_tasks = sum(w for s, w in walls.items() if s in first["ran"])
    fresh = all(first["ran"].values())  # compute figures describe this run only if every stage ran
    return {
        "fresh_run": fresh,
        "wall_seconds": whole,
        "stages": stages,
        "register_seconds": walls.get("register"),
        "stage_tasks_seconds": in_tasks,
        "flow_outside_tasks_seconds": whole - in_tasks - walls.get("register", 0.0),
        "model_compute_seconds": compute_total if fresh else None,
        "non_compute_share": (whole - compute_total) / whole if fresh else None,
        "non_compute_share_reported_only": (whole - compute_reported) / whole if fresh else None,
        "rerun_wall_seconds": rerun["wall_seconds"],
        "rerun_trained_nothing": rerun["trained_nothing"],
        "rerun_log": rerun["log"],
        "registration": first["registration"],
        "gate_passed": first["gate_passed"],
        "flow_run_id": first["flow_run_id"],
    }
