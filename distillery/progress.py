"""Progress of the long loops (training epochs), for a dashboard to show while a stage runs.

A stage runs in its own process (DVC starts `distillery stage NAME`), so it cannot update the
flow's Prefect artifacts itself. When the flow names a file in `DISTILLERY_PROGRESS_FILE`, the
loops write `{"label", "done", "total"}` there (atomically, at most once a second, and at the
end); the flow reads it and updates the stage's Prefect progress artifact. Without the variable
(`dvc repro`, tests) this does nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PROGRESS_ENV = "DISTILLERY_PROGRESS_FILE"
MIN_INTERVAL_S = 1.0
_last_write = 0.0


def report_progress(label: str, done: int, total: int) -> None:
    """Record that `done` of `total` steps of the loop `label` are finished."""
    global _last_write
    target = os.environ.get(PROGRESS_ENV)
    if not target or total <= 0:
        return
    now = time.monotonic()
    if done < total and now - _last_write < MIN_INTERVAL_S:
        return  # a dashboard needs no more than one update a second
    _last_write = now
    from distillery.fileio import write_atomically

    text = json.dumps({"label": label, "done": int(done), "total": int(total)})
    write_atomically(Path(target), lambda tmp: tmp.write_text(text))


def read_progress(path: str | Path) -> dict | None:
    """The last progress written to `path`, or None (nothing yet, or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not {"label", "done", "total"} <= set(data) or data["total"] <= 0:
        return None
    return data
