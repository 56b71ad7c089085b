"""The sweep as a Prefect flow on Dask: many student configurations at once, the Pareto front of
their figures, and the smallest one that passes the gate written as a params file.

1. The pipeline is brought up to `soft_targets` the normal way (each stage through DVC): every
   member shares the validated data, the teacher and its soft targets.
2. Each member (`sweep.space`, grid or random) is a Prefect task submitted to the Dask task
   runner: a temporary local cluster of `sweep.workers` processes, or the cluster at `--address`.
   It runs the distill, prune and quantize stage code in its own folder (tasks/sweep.py).
3. This process, alone, logs an MLflow parent run with one child run per member, writes the
   table and the plot of the front, and `best.params.yaml`. Nothing is registered: running
   `distillery run --params <out_dir>/best.params.yaml` reproduces the chosen member through the
   normal pipeline, which registers it if it passes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from distillery.config import PARAMS_FILE, ConfigError, load_params, params_from_dict, params_text_with, read_raw
from distillery.fileio import write_atomically
from distillery.sweep import (TABLE_COLUMNS, choose_smallest_passing, describe, expand_space, member_name,
                              member_params, pareto_front, plot_front, table_markdown)
from flows.pipeline import check_stage_inputs, ensure_dvc, stage_task
from tasks import tracking
from tasks.common import write_json_atomic
from tasks.graph import stage_graph
from tasks.sweep import run_member

BEST_PARAMS = "best.params.yaml"
OUTPUTS = ("members.csv", "members.md", "pareto.png", "sweep.json", BEST_PARAMS)


@task(name="sweep-member", task_run_name="sweep-member-{name}")
def member_task(root: str, name: str, overrides: dict) -> dict:
    return run_member(root, name, overrides)


def task_runner(workers: int, address: str | None):
    """Dask: the cluster at `address`, else a temporary local cluster of `workers` processes
    (one thread each: a member's PyTorch and ONNX Runtime use `base.threads` themselves)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class=local_cluster,
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


# Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to their workers (`distributed.nanny.pre-spawn-environ`).
# Setting it at all turns off glibc's dynamic mmap threshold, so every buffer over 128 kB (each layer's
# activations) is mapped and unmapped again, page faults included. Without it a 2-worker soft_targets run
# at 133k SST-2 rows took 336 s instead of 456 s (`python -m bench.scale`, README: Cost growth benchmark).
NANNY_MALLOC_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def local_cluster(**kwargs):
    """A LocalCluster whose worker processes keep glibc's default memory trimming (see NANNY_MALLOC_TRIM)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({NANNY_MALLOC_TRIM: None}):
        return LocalCluster(**kwargs)


def sweep_dir(root: Path, out_dir: str) -> Path:
    """The sweep's folder, which must lie inside the project and outside every pipeline path."""
    out = (root / out_dir).resolve()
    params = load_params(root / PARAMS_FILE, check_files=False)
    owned = [(root / p).resolve() for p in params.paths.model_dump().values() if p != params.paths.reports_dir]
    if not out.is_relative_to(root) or out == root or out == (root / params.paths.reports_dir).resolve() or any(
            out.is_relative_to(p) or p.is_relative_to(out) for p in owned):
        raise ConfigError(f"params.yaml: sweep.out_dir: {out_dir!r} must be a folder of its own inside the "
                          "project, apart from the pipeline's paths")
    return out


def write_best_params(root: Path, overrides: dict, path: Path) -> Path:
    """params.yaml (comments kept) with the member's overrides: a valid params file for `distillery run`."""
    text = params_text_with(root / PARAMS_FILE, overrides)
    write_atomically(path, lambda tmp: tmp.write_text(text))
    params_from_dict(read_raw(path), str(path), root)  # what `distillery run --params` will check
    return path


def prepare_pipeline(root: Path, params) -> dict[str, bool]:
    """The stages every member depends on, through DVC as `distillery run` runs them."""
    ran = {}
    graph = stage_graph(root)
    for stage in list(graph)[: list(graph).index("soft_targets") + 1]:
        check_stage_inputs(root, params, stage, graph[stage].deps)
        ran[stage] = stage_task(stage)(str(root))
    return ran


def gather(futures: dict) -> list[dict]:
    """Each member's result, or its error: a member that fails is reported, the others still count."""
    rows = []
    for name, (overrides, future) in futures.items():
        row = {"member": name, "overrides": describe(overrides), "overrides_dict": overrides, "error": None}
        try:
            result = future.result()
        except Exception as exc:
            row.update(error=f"{type(exc).__name__}: {exc}", gate_passed=False)
            print(f"sweep: member {name} ({row['overrides']}) failed: {row['error']}")
        else:
            row.update(result["figures"], gate_passed=result["gate"]["passed"], result=result)
        rows.append(row)
    return rows


def conclude(root: Path, out: Path, rows: list[dict]) -> dict:
    """Mark the front and the chosen member, write the table, the plot, the summary and, when a
    member passed the gate, `best.params.yaml`; when none did, say so and write no params file."""
    done = [r for r in rows if not r["error"]]
    front = {done[i]["member"] for i in pareto_front(done)}
    pick = choose_smallest_passing(done)
    chosen = done[pick] if pick is not None else None
    for r in rows:
        r["pareto"], r["chosen"] = r["member"] in front, r is chosen
    summary = {"members": rows, "front": [r["member"] for r in rows if r["pareto"]],
               "chosen": chosen["member"] if chosen else None,
               "chosen_overrides": chosen["overrides_dict"] if chosen else None, "best_params": None}
    if chosen:
        best = write_best_params(root, chosen["overrides_dict"], out / BEST_PARAMS)
        summary["best_params"] = str(best.relative_to(root))
        print(f"sweep: chosen {chosen['member']} ({chosen['overrides']}): the smallest model that passed the gate, "
              f"{chosen['size_mb']:.2f} MB, accuracy {chosen['accuracy']:.4f}. Reproduce and register it with:\n"
              f"  distillery run --params {summary['best_params']}")
    else:
        print(f"sweep: NO member passed the gate ({len(done)} of {len(rows)} finished); no params file written. "
              f"Each member's figures and gate: {out.relative_to(root)}/members.md")
    write_outputs(out, rows, summary)
    return summary


def log_members(client, exp_id: str, parent: str, root: Path, out: Path, rows: list[dict]) -> None:
    """One MLflow child run per member, with its overrides, figures, gate checks and reports."""
    for r in rows:
        result = r.get("result") or {}
        report = {**({k: r[k] for k in result.get("figures", {})}), "seconds": result.get("seconds", 0.0),
                  "stages": result.get("stages", {})}
        params = {k: json.dumps(v) for k, v in r["overrides_dict"].items()}
        reports_dir = out / "members" / r["member"] / "reports"
        rid = tracking.log_stage_run(client, exp_id, parent, r["member"], ran=not r["error"], report=report,
                                     params=params, artifacts=sorted(reports_dir.glob("*.json")),
                                     status="FAILED" if r["error"] else "FINISHED")
        tags = {"sweep.pareto": str(r["pareto"]).lower(), "sweep.chosen": str(r["chosen"]).lower(),
                "gate_passed": str(bool(r["gate_passed"])).lower(), "sweep.worker": str(result.get("worker")),
                "sweep.pid": str(result.get("pid"))}
        if r["error"]:
            tags["failure"] = r["error"][:4000]
        for k, v in tags.items():
            client.set_tag(rid, k, v)
        if result:
            tracking.log_gate_checks(client, rid, result["gate"]["checks"])


def write_outputs(out: Path, rows: list[dict], summary: dict) -> None:
    table = [{k: r.get(k) for k in TABLE_COLUMNS} for r in rows]
    write_atomically(out / "members.md", lambda tmp: tmp.write_text(table_markdown(table)))

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=TABLE_COLUMNS)
            w.writeheader()
            w.writerows(table)

    write_atomically(out / "members.csv", write_csv)
    if any(not r["error"] for r in rows):
        plot_front(table, out / "pareto.png")
    write_json_atomic(out / "sweep.json", summary)


@flow(name="distillery-sweep", log_prints=True)
def sweep(project_dir: str = ".") -> dict:
    """Members in parallel on the flow's task runner (Dask), then the front and the chosen params."""
    root = Path(project_dir).resolve()
    params = load_params(root / PARAMS_FILE)
    s = params.sweep
    if not s.space:
        raise ConfigError("params.yaml: sweep.space is empty: list the values to try, e.g. "
                          "student.layers: [[0, 5], [0, 2, 5]]")
    out = sweep_dir(root, s.out_dir)
    members = {member_name(i): o for i, o in enumerate(expand_space(s.space, s.sampler, s.samples, params.base.seed))}
    raw = read_raw(root / PARAMS_FILE)
    for name, overrides in members.items():  # every member's params are valid before anything runs
        member_params(raw, overrides, name, root)
    ensure_dvc(root)
    ran = prepare_pipeline(root, params)
    print(f"sweep: pipeline ready up to soft_targets ({', '.join(f'{k}: ' + ('ran' if v else 'unchanged') for k, v in ran.items())}); "
          f"{len(members)} members ({s.sampler})")
    for name in OUTPUTS:  # the last sweep's results must not pass for this one's
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "members", ignore_errors=True)
    client = tracking.client_for(root, params)
    exp_id = tracking.experiment_id(client, root, params)
    parent = tracking.start_parent_run(client, exp_id, f"sweep-{flow_run.get_name() or 'local'}",
                                       {"prefect_flow_run_id": str(flow_run.get_id()), "distillery.sweep": "true",
                                        "params_hash": params.section_hash(), **tracking.process_tags(root)})
    try:
        futures = {name: (o, member_task.submit(str(root), name, o)) for name, o in members.items()}
        rows = gather(futures)
        out.mkdir(parents=True, exist_ok=True)
        summary = {**conclude(root, out, rows), "driver_pid": os.getpid()}
        log_members(client, exp_id, parent, root, out, rows)
        create_markdown_artifact(f"# Distillery sweep\n\n{table_markdown(summary['members'])}",
                                 key="distillery-sweep", description="Sweep members, Pareto front, chosen member")
        for f in OUTPUTS:
            if (out / f).exists():
                client.log_artifact(parent, str(out / f))
        client.set_tag(parent, "sweep.chosen", summary["chosen"] or "none")
        client.set_terminated(parent, status="FINISHED")
    except BaseException as exc:
        client.set_tag(parent, "failure", str(exc)[:4000])
        client.set_terminated(parent, status="FAILED")
        raise
    return summary
