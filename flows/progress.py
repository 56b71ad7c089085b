"""A Prefect progress artifact per stage task run, fed by the stage's own training loops.

The stage runs in a separate process (DVC runs `distillery stage NAME`); its loops write their
progress to the file named by `DISTILLERY_PROGRESS_FILE` (distillery.progress). Here the task
names that file, polls it once a second and updates the artifact, which the Prefect UI shows
as a progress bar on the task run and the flow run while the stage trains.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from distillery.progress import PROGRESS_ENV, read_progress

POLL_S = 1.0


def progress_key(stage: str) -> str:
    return f"progress-{stage.replace('_', '-')}"  # artifact keys: lowercase letters, digits, dashes


@contextlib.contextmanager
def stage_progress(stage: str):
    """Around one stage's run; the caller puts the outcome in the yielded dict's "result"."""
    artifact_id = create_progress_artifact(0.0, key=progress_key(stage), description=f"{stage}: starting")
    folder = tempfile.mkdtemp(prefix="distillery-progress-")
    path = Path(folder) / "progress.json"
    previous = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = str(path)
    stop, outcome = threading.Event(), {"result": "failed"}

    def follow() -> None:
        last = None
        while not stop.wait(POLL_S):
            now = read_progress(path)
            if now is None or now == last:
                continue
            try:
                update_progress_artifact(artifact_id, 100.0 * now["done"] / now["total"],
                                         description=f"{stage}: {now['label']} ({now['done']}/{now['total']})")
                last = now
            except Exception as exc:  # the dashboard lagging must not stop training
                get_run_logger().warning("progress of %s not updated: %s", stage, exc)

    follower = threading.Thread(target=follow, name=f"progress-{stage}", daemon=True)
    follower.start()
    try:
        yield outcome
    finally:
        stop.set()
        follower.join()
        if previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = previous
        last = read_progress(path)
        shutil.rmtree(folder, ignore_errors=True)
        done = outcome["result"] != "failed"
        value = 100.0 if done else (100.0 * last["done"] / last["total"] if last else 0.0)
        update_progress_artifact(artifact_id, value, description=f"{stage}: {outcome['result']}")
