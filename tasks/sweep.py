"""One sweep member: the distill, prune and quantize stage code in the member's own folder, then
the gate's thresholds on its final model.

A member reads what the project's pipeline made (validated data, teacher, soft targets) and writes
only under `<sweep.out_dir>/members/<name>/`: no DVC, no MLflow, no registry (the flow that
collects the members logs them, in one process). It runs wherever Dask puts it, so it needs the
project folder at the same path there.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from distillery.config import PARAMS_FILE, load_params, read_raw
from distillery.gate import evaluate_gate
from distillery.measure import FIGURES
from tasks.common import StageContext, read_json, report_path, write_json_atomic

MEMBER_STAGES = ("distill", "prune", "quantize")


def run_member(root: str | Path, name: str, overrides: dict[str, Any]) -> dict:
    """Train, prune, quantize and gate one member; returns its figures and where it ran."""
    import importlib

    import torch

    from distillery.sweep import member_params
    from distillery.training import seed_everything

    root = Path(root).resolve()
    params = member_params(read_raw(root / PARAMS_FILE), overrides, name, root)
    ctx = StageContext(root, params)
    start = time.perf_counter()
    reports = {}
    for stage in MEMBER_STAGES:
        torch.set_num_threads(params.base.threads)  # as `distillery stage` sets up each stage
        seed_everything(params.base.seed)
        reports[stage] = importlib.import_module(f"tasks.{stage}").run(ctx)
    teacher = read_json(report_path(root, load_params(root / PARAMS_FILE, check_files=False), "teacher"))
    decision = evaluate_gate(reports["quantize"], teacher, params.gate)
    write_json_atomic(ctx.report_path("gate"), decision.to_dict())
    return {"member": name, "overrides": overrides, "figures": {k: reports["quantize"][k] for k in FIGURES},
            "stages": {s: {k: r[k] for k in FIGURES} for s, r in reports.items()},
            "gate": decision.to_dict(), "seconds": time.perf_counter() - start,
            "host": socket.gethostname(), "pid": os.getpid(), "worker": _dask_worker()}


def _dask_worker() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not on a Dask worker
        return None
