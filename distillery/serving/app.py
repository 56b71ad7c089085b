"""The scoring server: FastAPI on uvicorn, `mlflow models serve`'s request and response formats.

POST /invocations  dataframe_split | dataframe_records | inputs | instances -> {"predictions": [...],
                   "model_version": V, "request_id": R}; headers X-Model-Version, X-Request-Id
POST /feedback     {"request_id", "label", "row"?} or {"feedback": [...]}: ground truth for a logged request
GET  /health, /ping (alive), /ready (a champion is loaded), /version, /metrics (Prometheus)

The champion answers; the shadow (if any) scores the same rows on a worker thread fed by a bounded
queue, after the response is built, so it adds no latency and a slow or failing shadow only drops
its own work (counted in /metrics).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from distillery.serving.inputs import InputError, Limits, parse_json, parse_rows
from distillery.serving.models import AliasFollower, ModelSlot, ServedModel
from distillery.serving.predlog import PredictionLog

log = logging.getLogger("distillery.serving")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
VERSION_HEADER, REQUEST_HEADER = "X-Model-Version", "X-Request-Id"


@dataclass
class ServingState:
    champion: ModelSlot
    shadow: ModelSlot | None = None
    log: PredictionLog | None = None
    limits: Limits = field(default_factory=Limits)
    followers: list[AliasFollower] = field(default_factory=list)
    shadow_queue_size: int = 1000
    model_name: str = ""


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("distillery_serving_requests", "HTTP requests by path and status code",
                                ["path", "code"], registry=r)
        self.errors = Counter("distillery_serving_errors", "requests answered 4xx/5xx, by status code",
                              ["code"], registry=r)
        self.latency = Histogram("distillery_serving_latency_seconds", "/invocations latency (parse, score, answer)",
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5), registry=r)
        self.rows = Counter("distillery_serving_rows", "rows scored, by role", ["role"], registry=r)
        self.version = Gauge("distillery_serving_model_version", "registry version being served, by role",
                             ["role"], registry=r)
        self.swaps = Counter("distillery_serving_model_swaps", "version changes taken from the registry",
                             ["role"], registry=r)
        self.shadow_dropped = Counter("distillery_serving_shadow_dropped", "requests the shadow skipped (queue full)",
                                      registry=r)
        self.shadow_errors = Counter("distillery_serving_shadow_errors", "shadow scorings that failed", registry=r)


def _error(status: int, message: str, code: str = "BAD_REQUEST") -> JSONResponse:
    # MLflow's scoring server answers errors as {"error_code", "message"}
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


def _mlflow_rows(preds: list[dict]) -> list[dict]:
    """The registered pyfunc's output rows: label + prob_<class> (so `mlflow models serve` clients keep working)."""
    return [{"label": p["label"], **{f"prob_{k}": v for k, v in p["probabilities"].items()}} for p in preds]


class ShadowWorker:
    def __init__(self, state: ServingState, metrics: Metrics):
        self.state, self.metrics = state, metrics
        self.queue: queue.Queue = queue.Queue(maxsize=state.shadow_queue_size)
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self.scored = 0

    def start(self):
        self._thread.start()

    def submit(self, request_id: str, rows: list, ts: float, champion_version: str) -> None:
        shadow = self.state.shadow.current
        if shadow is None or shadow.version == champion_version:
            return  # after a promotion the challenger alias may point at the champion: nothing to compare
        try:
            self.queue.put_nowait((request_id, rows, ts))
        except queue.Full:
            self.metrics.shadow_dropped.inc()

    def _run(self):
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                model = self.state.shadow.current
                if model is None:
                    continue
                request_id, rows, ts = item
                t0 = time.perf_counter()
                preds = model.score(rows)
                ms = (time.perf_counter() - t0) * 1000
                self.metrics.rows.labels("shadow").inc(len(rows))
                if self.state.log is not None:
                    self.state.log.record(request_id, "shadow", model.version, rows, preds, ms, ts)
                self.scored += 1
            except Exception as exc:  # a failing shadow must never reach a client
                self.metrics.shadow_errors.inc()
                log.warning("shadow scoring failed: %s", exc)
            finally:
                self.queue.task_done()

    def drain(self):
        self.queue.join()

    def stop(self):
        self.queue.put(None)
        self._thread.join(timeout=10)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, f"request body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(state: ServingState) -> FastAPI:
    metrics = Metrics()
    shadow = ShadowWorker(state, metrics) if state.shadow is not None else None

    def show_version(role, version):
        metrics.version.labels(role).set(float(version) if str(version).isdigit() else -1)

    def on_swap(role, _before, after):
        metrics.swaps.labels(role).inc()
        show_version(role, after)

    for f in state.followers:
        f.on_swap = on_swap
    for slot in (state.champion, state.shadow):
        if slot is not None and slot.version is not None:
            show_version(slot.role, slot.version)

    async def lifespan(_app):
        if shadow is not None:
            shadow.start()
        for f in state.followers:
            f.start()
        yield
        for f in state.followers:
            f.stop()
        if shadow is not None:
            shadow.stop()
        if state.log is not None:
            state.log.close()

    app = FastAPI(title="distillery serve-model", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving, app.state.metrics, app.state.shadow_worker = state, metrics, shadow

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        path = request.url.path if request.url.path in {"/invocations", "/feedback", "/health", "/ping", "/ready",
                                                        "/version", "/metrics"} else "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(str(response.status_code)).inc()
        return response

    @app.post("/invocations")
    async def invocations(request: Request):
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _error(415, f"content type {ctype!r} is not supported: send application/json")
        model: ServedModel | None = state.champion.current  # read once: this request keeps this version
        if model is None:
            return _error(503, "no model loaded yet", "SERVICE_UNAVAILABLE")
        rid = request.headers.get(REQUEST_HEADER) or uuid.uuid4().hex
        if not REQUEST_ID.match(rid):
            return _error(400, f"{REQUEST_HEADER} must be 1-64 characters of [A-Za-z0-9._:-]")
        try:
            rows = parse_rows(parse_json(await _read_body(request, state.limits.max_body_bytes), state.limits),
                              model.columns, state.limits)
        except InputError as exc:
            return _error(exc.status, str(exc))
        ts, t_score = time.time(), time.perf_counter()
        try:
            preds = await anyio.to_thread.run_sync(model.score, rows)
        except Exception as exc:
            log.exception("scoring failed")
            return _error(500, f"scoring failed: {type(exc).__name__}: {exc}", "INTERNAL_ERROR")
        done = time.perf_counter()
        ms, score_ms = (done - t0) * 1000, (done - t_score) * 1000
        body = json.dumps({"predictions": _mlflow_rows(preds), "model_version": model.version, "request_id": rid})
        metrics.latency.observe(ms / 1000)
        metrics.rows.labels("champion").inc(len(rows))
        if state.log is not None:
            # the log holds scoring time for both roles alike (the histogram has the whole request)
            state.log.record(rid, "champion", model.version, rows, preds, score_ms, ts)
        if shadow is not None:
            shadow.submit(rid, rows, ts, model.version)
        return Response(body, media_type="application/json",
                        headers={VERSION_HEADER: model.version, REQUEST_HEADER: rid})

    @app.post("/feedback")
    async def feedback(request: Request):
        if state.log is None:
            return _error(409, "this server keeps no prediction log (start it with --log)", "NOT_LOGGING")
        try:
            payload = parse_json(await _read_body(request, state.limits.max_body_bytes), state.limits)
            items = parse_feedback(payload, state.champion.current.labels if state.champion.current else None)
        except InputError as exc:
            return _error(exc.status, str(exc))
        unknown = await anyio.to_thread.run_sync(state.log.add_feedback, items)
        if unknown:
            return _error(404, f"no logged request with id(s) {unknown[:20]}; the others were stored",
                          "RESOURCE_DOES_NOT_EXIST")
        return {"stored": len(items)}

    @app.get("/health")
    @app.get("/ping")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.champion.current is None:
            return _error(503, "no model loaded yet", "SERVICE_UNAVAILABLE")
        return {"status": "ready", "model_version": state.champion.version}

    @app.get("/version")
    async def version():
        return {"model_name": state.model_name, "champion": state.champion.version,
                "shadow": state.shadow.version if state.shadow else None,
                "follow_errors": {f.alias: f.last_error for f in state.followers if f.last_error}}

    @app.get("/metrics")
    async def prom():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def parse_feedback(payload: object, labels: list[str] | None) -> list[dict]:
    """{"request_id", "label", "row"?} or {"feedback": [those]} -> items; InputError naming what is wrong."""
    items = payload.get("feedback") if isinstance(payload, dict) and "feedback" in payload else [payload]
    if not isinstance(items, list) or not items:
        raise InputError(422, "feedback must be an object {request_id, label, row?} or {\"feedback\": [...]}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("request_id"), str) or "label" not in item:
            raise InputError(422, f"feedback[{i}]: needs a string request_id and a label")
        row = item.get("row", 0)
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise InputError(422, f"feedback[{i}]: row must be an integer >= 0, got {row!r}")
        label = str(item["label"])
        if labels is not None and label not in labels:
            raise InputError(422, f"feedback[{i}]: label {label!r} is not one of the model's labels {labels}")
        out.append({"request_id": item["request_id"], "label": label, "row": row})
    return out
