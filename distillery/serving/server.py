"""Build the serving state from registry callables and run it under uvicorn (no mlflow here)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from distillery.serving.inputs import Limits
from distillery.serving.models import AliasFollower, ModelSlot
from distillery.serving.predlog import PredictionLog, Retention

DEFAULT_LOG = "serving/predictions.db"  # under the project folder
DEFAULT_CACHE = "serving/models"
SHADOW_REPORT = "reports/shadow_report.json"


@dataclass(frozen=True)
class ServeOptions:
    alias: str = "champion"
    shadow_alias: str | None = None
    poll_interval: float = 5.0
    threads: int = 1  # ORT intra-op threads per session; concurrency comes from uvicorn's thread pool
    log_path: Path | None = None
    log_text: bool = False
    retention: Retention = Retention()
    limits: Limits = Limits()
    shadow_queue_size: int = 1000


def build_state(name: str, resolve: Callable[[str], str | None], fetch: Callable[[str], Path], opts: ServeOptions):
    """Load the champion (and shadow) now, so the server is ready when it starts listening."""
    from distillery.serving.app import ServingState

    champion = ModelSlot("champion")
    followers = [AliasFollower(champion, opts.alias, resolve, fetch, opts.poll_interval, opts.threads)]
    shadow = None
    if opts.shadow_alias:
        shadow = ModelSlot("shadow")
        followers.append(AliasFollower(shadow, opts.shadow_alias, resolve, fetch, opts.poll_interval, opts.threads))
    for f in followers:
        f.poll_once()
    if champion.current is None:
        raise FileNotFoundError(f"{name}: alias {opts.alias!r} points at no version")
    log = PredictionLog(opts.log_path, opts.retention, opts.log_text) if opts.log_path else None
    return ServingState(champion=champion, shadow=shadow, log=log, limits=opts.limits, followers=followers,
                        shadow_queue_size=opts.shadow_queue_size, model_name=name)


def serve(state, host: str, port: int) -> None:
    import uvicorn

    from distillery.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"serve-model: {state.model_name} v{state.champion.version} on http://{host}:{port}/invocations"
          + (f", shadow v{state.shadow.version}" if state.shadow and state.shadow.version else ""), flush=True)
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)


def read_feedback_file(path: str | Path) -> list[dict]:
    """request_id,label[,row] rows from a CSV (with a header) or JSON lines file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix in (".jsonl", ".json"):
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = list(csv.DictReader(text.splitlines()))
    out = []
    for i, item in enumerate(items, start=1):
        if not item.get("request_id") or item.get("label") in (None, ""):
            raise ValueError(f"{path}: record {i} needs request_id and label")
        out.append({"request_id": str(item["request_id"]), "label": str(item["label"]),
                    "row": int(item.get("row") or 0)})
    return out
