"""`distillery ui`: the MLflow UI and the Prefect UI over the project's own stores, on 127.0.0.1.

Each server runs as a child process in its own process group (so a Ctrl-C reaches this process
only, which then stops each group: the server and any workers it started, SIGTERM, then SIGKILL
after a grace period).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from distillery.config import ConfigError

HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
START_TIMEOUT_S = 180.0


@dataclass
class Server:
    name: str
    url: str
    health: str  # a URL that answers once the server is ready
    proc: subprocess.Popen


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _start(name: str, cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start_servers(root: Path, tracking_uri: str, mlflow_port: int, prefect_port: int) -> list[Server]:
    """Start both servers (after checking their ports); returns them without waiting."""
    bindir = Path(sys.executable).parent
    servers: list[Server] = []
    plan = []
    if tracking_uri.startswith("sqlite:///"):
        plan.append(("mlflow", mlflow_port, "--mlflow-port"))
    else:
        print(f"MLflow: the project tracks to {tracking_uri}, which serves its own UI; not starting one")
    plan.append(("prefect", prefect_port, "--prefect-port"))
    for name, port, flag in plan:
        if not _port_free(port):
            raise ConfigError(f"{name} UI: port {port} on {HOST} is in use; choose another with {flag}")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = root / ".dashboards"
    try:
        if plan[0][0] == "mlflow":
            store = Path(tracking_uri[len("sqlite:///"):])
            store.parent.mkdir(parents=True, exist_ok=True)
            cmd = [str(bindir / "mlflow"), "ui", "--backend-store-uri", tracking_uri,
                   "--artifacts-destination", (store.parent / "artifacts").resolve().as_uri(),
                   "--host", HOST, "--port", str(mlflow_port), "--workers", "1"]
            servers.append(Server("MLflow", f"http://{HOST}:{mlflow_port}", f"http://{HOST}:{mlflow_port}/health",
                                  _start("mlflow", cmd, env, logs / "mlflow.log")))
        prefect_env = {**env, "PREFECT_HOME": env.get("PREFECT_HOME", str(root / ".prefect"))}
        prefect_env.pop("PREFECT_API_URL", None)  # the server itself needs none; the UI talks to its own API
        cmd = [str(bindir / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)]
        servers.append(Server("Prefect", f"http://{HOST}:{prefect_port}", f"http://{HOST}:{prefect_port}/api/health",
                              _start("prefect", cmd, prefect_env, logs / "prefect.log")))
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def wait_until_ready(servers: list[Server], timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    for s in servers:
        while True:
            if s.proc.poll() is not None:
                raise RuntimeError(f"{s.name} UI exited with code {s.proc.returncode} while starting "
                                   f"(its log is in .dashboards/)")
            try:
                urllib.request.urlopen(s.health, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{s.name} UI did not answer at {s.health} within {timeout:.0f} s") from None
                time.sleep(0.5)


def stop_servers(servers: list[Server]) -> None:
    """SIGTERM each server's process group, SIGKILL what is left after the grace period."""
    for s in servers:
        _signal_group(s.proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(s.proc, signal.SIGKILL)  # workers that outlived their parent, or a stuck server
        s.proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


def run_dashboards(root: Path, tracking_uri: str, mlflow_port: int, prefect_port: int) -> int:
    """Start both UIs, print where they are, and keep them up until Ctrl-C (or SIGTERM)."""
    def on_term(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    servers: list[Server] = []
    try:
        servers = start_servers(root, tracking_uri, mlflow_port, prefect_port)
        wait_until_ready(servers)
        for s in servers:
            print(f"{s.name} UI: {s.url}  (pid {s.proc.pid})", flush=True)
        if any(s.name == "Prefect" for s in servers):
            print(f"to schedule against this Prefect server: export PREFECT_API_URL=http://{HOST}:{prefect_port}/api",
                  flush=True)
        print("Ctrl-C stops both", flush=True)
        while True:
            for s in servers:
                if s.proc.poll() is not None:
                    print(f"{s.name} UI exited with code {s.proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the dashboards", flush=True)
        return 0
    finally:
        stop_servers(servers)
        signal.signal(signal.SIGTERM, previous)
