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


def serve(root: Path, watch_interval: float) -> None:
    """Run the deployment's runs here, one at a time, and watch the data, until Ctrl-C.

    The deployment keeps the schedule `distillery schedule` gave it. While nothing serves it,
    Prefect pauses it, so runs do not pile up; serving resumes it.
    """
    import asyncio

    from prefect.runner import Runner
    from prefect.exceptions import TerminationSignal

    url = require_server()
    schedules = existing_schedules(root)
    runner = Runner(name=f"distillery-{deployment_name(root)}", pause_on_shutdown=True, limit=1)
    # Applying replaces the deployment's trigger (Prefect re-creates its automation): the watcher
    # starts after that, so no event arrives while the project has no trigger.
    runner.add_deployment(build_deployment(root, schedules))
    stop = threading.Event()
    watcher = None
    if watch_interval > 0:
        watcher = threading.Thread(target=watch_loop, args=(root, watch_interval, stop), name="watch", daemon=True)
        watcher.start()
    print(f"serving {FLOW_NAME}/{deployment_name(root)} from {url}: "
          f"{', '.join(str(getattr(s, 'cron', s)) for s in schedules) or 'no schedule (run distillery schedule)'}",
          flush=True)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        print("serve: stopping; the deployment's schedule is paused until the next `distillery serve`", flush=True)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=10)
