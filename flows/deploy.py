"""The retraining deployment on a real Prefect server: its schedule, its new-data trigger, its runner.

- `distillery schedule --cron ...` creates or updates deployment `distillery-retrain/<project>` with
  the cron schedule and a trigger: an automation that starts a run when the event
  `distillery.data.changed` arrives for this project.
- `distillery serve` runs the deployment's runs (scheduled, triggered, or started by hand) in this
  process, one at a time, and watches the project's data files: new content emits that event.
- `distillery watch` is the watcher alone (e.g. on the machine where the data lands).

All of them need PREFECT_API_URL: a schedule on the temporary server `distillery run` starts
would vanish with it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from distillery.config import PARAMS_FILE, ConfigError, load_params
from distillery.watch import DataWatcher

FLOW_NAME = "distillery-retrain"
DATA_EVENT = "distillery.data.changed"


def require_server() -> str:
    """The Prefect API URL, after checking that a server answers there."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("scheduling needs a running Prefect server: set PREFECT_API_URL, e.g. "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (`distillery ui` starts one over this "
                          "project's .prefect/; `prefect server start` starts a standalone one)")
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise ConfigError(f"PREFECT_API_URL={url}: the Prefect server does not answer ({error})")
    return url


def deployment_name(root: Path) -> str:
    return root.name.replace("/", "-").replace("%", "-") or "project"


def project_resource(root: Path) -> dict[str, str]:
    """The Prefect event resource that stands for this project (events and the trigger match on it)."""
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return {"prefect.resource.id": f"distillery.project.{digest}", "prefect.resource.name": deployment_name(root),
            "distillery.project.path": str(root)}


def build_deployment(root: Path, schedules: list, paused: bool = False):
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from flows.retrain import retrain

    trigger = DeploymentEventTrigger(
        name=f"new data for {deployment_name(root)}", expect={DATA_EVENT},
        match={"prefect.resource.id": project_resource(root)["prefect.resource.id"]},
        parameters={"project_dir": str(root)})
    return retrain.to_deployment(
        name=deployment_name(root), schedules=schedules, paused=paused, parameters={"project_dir": str(root)},
        triggers=[trigger], tags=["distillery"], entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"Retrain {root} when its data or params changed since the champion was trained")


def existing_schedules(root: Path) -> list:
    """The schedules the server holds for this project's deployment (none if it does not exist)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(root)}")
        except ObjectNotFound:
            return []
    return [s.schedule for s in dep.schedules]


def schedule(root: Path, cron: str, timezone: str) -> str:
    """Create or update the deployment with this cron schedule and the new-data trigger."""
    from prefect.schedules import Cron

    url = require_server()
    try:
        cron_schedule = Cron(cron, timezone=timezone)
    except ValueError as exc:
        raise ConfigError(f"--cron {cron!r} / --timezone {timezone!r}: {exc}") from None
    deployment_id = build_deployment(root, [cron_schedule]).apply()
    name = f"{FLOW_NAME}/{deployment_name(root)}"
    print(f"deployment {name} ({deployment_id}) on {url}: cron {cron!r} ({timezone}), "
          f"and a run whenever event {DATA_EVENT} arrives for this project")
    print("runs start once a runner serves it: `distillery serve` (keeps running; Ctrl-C stops it)")
    return str(deployment_id)


def data_paths(root: Path) -> list[Path]:
    params = load_params(root / PARAMS_FILE, check_files=False)
    return [root / params.data.train_path, root / params.data.eval_path]


def emit_data_changed(root: Path, changed: list[Path]) -> None:
    from prefect.events import emit_event

    files = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in changed]
    emit_event(event=DATA_EVENT, resource=project_resource(root), payload={"files": files})
    print(f"watch: new content in {', '.join(files)}: event {DATA_EVENT} sent", flush=True)


def watch_loop(root: Path, interval: float, stop: threading.Event) -> None:
    """Poll the data files named in params.yaml (re-read each time) until `stop` is set."""
    watcher = DataWatcher()
    watcher.poll(data_paths(root))
    print(f"watch: watching {', '.join(str(p.relative_to(root)) for p in watcher.hashes)} every {interval:g} s",
          flush=True)
    while not stop.wait(interval):
        try:
            changed = watcher.poll(data_paths(root))
        except (ConfigError, OSError) as exc:  # params.yaml mid-edit, a file mid-copy: look again next time
            print(f"watch: {exc}", flush=True)
            continue
        if changed:
            emit_data_changed(root, changed)


def watch(root: Path, interval: float) -> None:
    """The watcher alone, in the foreground."""
    require_server()
    stop = threading.Event()
    try:
        watch_loop(root, interval, stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        time.sleep(0.5)  # let the events client send what it holds


def server_error(timeout_s: float = 10.0) -> Exception | None:
    """None when the Prefect API answers its health check now, else the error (one try: no retries)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: timeout_s}):
        with get_client(sync_client=True) as client:
            return client.api_healthcheck()


class ServerWatch(threading.Thread):
    """Says in serve's log when the Prefect server stops answering and when it answers again.

    The runner itself only logs failed polls (after its client's retries, about a minute each)."""

    def __init__(self, url: str, interval: float, stop: threading.Event):
        super().__init__(name="prefect-server-watch", daemon=True)
        self.url, self.interval, self.stop, self.down_since = url, interval, stop, None

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.check()

    def check(self) -> bool:
        error = server_error()
        if error is not None and self.down_since is None:
            self.down_since = time.monotonic()
            print(f"serve: the Prefect server at {self.url} does not answer ({error or type(error).__name__}): "
                  "no run starts until it is back; scheduled runs wait, a run in flight keeps going while its "
                  "retries last, one that dies meanwhile is marked Crashed once the server is back", flush=True)
        elif error is None and self.down_since is not None:
            print(f"serve: the Prefect server at {self.url} answers again after "
                  f"{time.monotonic() - self.down_since:.0f} s: serving resumes", flush=True)
            self.down_since = None
        return error is None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def is_outage(exc: BaseException) -> bool:
    """The runner stopped because the server was unreachable: its poll loop gave up ("Service
    exceeded error threshold") or a request found no server (httpx transport errors)."""
    import httpx

    return server_error() is not None or any(
        isinstance(e, httpx.TransportError) or "exceeded error threshold" in str(e) for e in _leaves(exc))


def crash_orphaned_runs(root: Path, why: str) -> list[str]:
    """Runs of this deployment that a runner left unfinished (Pending / Running / Cancelling, and
    their subflow runs), marked Crashed with why. Call only when no run of this process is alive:
    the runs of one project's deployment are served by one `distillery serve`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterParentFlowRunId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))
    crashed = []
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(root)}")
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                     flow_run_filter=FlowRunFilter(state=unfinished))
        for run in runs:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=unfinished, parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
            for fr in [*subflows, run]:
                client.set_flow_run_state(fr.id, Crashed(message=why), force=True)
                crashed.append(f"{fr.name} ({fr.id})")
    return crashed


def wait_for_server(watch: ServerWatch, stop: threading.Event) -> None:
    """Until the server answers and the old runner's run processes have ended."""
    while not watch.check() or _live_children():
        stop.wait(watch.interval)


def _live_children() -> list[int]:
    """This process's live descendants (a run's process that outlived its runner), zombies left out."""
    import psutil

    live = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                live.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return live


def serve(root: Path, watch_interval: float, server_check_s: float = 5.0) -> None:
    """Run the deployment's runs here, one at a time, and watch the data, until Ctrl-C.

    The deployment keeps the schedule `distillery schedule` gave it. While nothing serves it,
    Prefect pauses it, so runs do not pile up; serving resumes it. A Prefect server outage is
    survived: its start and end are logged; if it outlasts the runner's tolerance (three failed
    polls, each retried for about a minute) the runner stops, and a new one starts once the server
    answers again, after marking Crashed the runs the outage left unfinished.
    """
    import asyncio

    from prefect.runner import Runner
    from prefect.exceptions import TerminationSignal

    url = require_server()
    stop = threading.Event()
    watch = ServerWatch(url, server_check_s, stop)
    watch.start()
    watcher = None
    try:
        while True:
            schedules = existing_schedules(root)
            runner = Runner(name=f"distillery-{deployment_name(root)}", pause_on_shutdown=True, limit=1)
            # Applying replaces the deployment's trigger (Prefect re-creates its automation): the watcher
            # starts after that, so no event arrives while the project has no trigger.
            runner.add_deployment(build_deployment(root, schedules))
            if watcher is None and watch_interval > 0:
                watcher = threading.Thread(target=watch_loop, args=(root, watch_interval, stop), name="watch",
                                           daemon=True)
                watcher.start()
            print(f"serving {FLOW_NAME}/{deployment_name(root)} from {url}: "
                  f"{', '.join(str(getattr(s, 'cron', s)) for s in schedules) or 'no schedule (run distillery schedule)'}",
                  flush=True)
            try:
                asyncio.run(runner.start())
                break
            except (KeyboardInterrupt, TerminationSignal):
                raise
            except Exception as exc:
                if not is_outage(exc):
                    raise  # not an outage: a real failure
                print(f"serve: the runner stopped: the Prefect server at {url} stayed unreachable "
                      f"({'; '.join(sorted({type(e).__name__ for e in _leaves(exc)}))}); a new runner starts "
                      "when it answers again", flush=True)
            wait_for_server(watch, stop)
            for run in crash_orphaned_runs(root, f"its process ended while the Prefect server at {url} was "
                                                 "unreachable; `distillery serve` marked it crashed when the server "
                                                 "was back (its files and registration are settled by the next run)"):
                print(f"serve: marked crashed: {run}", flush=True)
    except (KeyboardInterrupt, TerminationSignal):
        print("serve: stopping; the deployment's schedule is paused until the next `distillery serve`", flush=True)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=10)
