"""The soft_targets stage's chunks as Prefect tasks on Dask (the engine of `distillery sweep`).

`distillery stage soft_targets` (what DVC runs) hands `dask_compute(...)` to the stage: the chunks
still missing from the chunk cache become one task each, submitted to a temporary LocalCluster of
`soft_targets.workers` processes, or to the scheduler at `soft_targets.address`. Each worker loads
a teacher once and writes each chunk's logits to its own Parquet file (tasks/soft_targets.py).
"""

from __future__ import annotations

from typing import Callable, ContextManager

from prefect import flow, task

from distillery.config import SoftTargetsConfig
from flows.sweep import task_runner
from tasks.soft_targets import compute_chunk


@task(name="soft-targets-chunk", task_run_name="soft-targets-chunk-{name}")
def chunk_task(name: str, spec: dict) -> str:
    return compute_chunk(spec)


@flow(name="distillery-soft-targets", log_prints=True)
def soft_target_chunks(specs: list[dict]) -> list[str]:
    """Every chunk as its own task; the flow fails if any does (the finished ones stay on disk)."""
    futures = [chunk_task.submit(f"{s['teacher_md5'][:8]}-{s['start']}", s) for s in specs]
    return [f.result() for f in futures]


def dask_compute(cfg: SoftTargetsConfig, api: Callable[[], ContextManager]) -> Callable[[list[dict]], object]:
    """The stage's `compute`. `api()` provides a Prefect API the workers share (see flows.prefect_api.own_prefect_api)."""

    def compute(specs: list[dict]) -> None:
        if not specs:  # every chunk is on disk: no cluster, no server
            return
        with api():
            soft_target_chunks.with_options(task_runner=task_runner(cfg.workers, cfg.address))(specs)

    return compute
