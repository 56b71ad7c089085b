"""A real multi-user store: `mlflow server` on a PostgreSQL database (Debian's `postgresql`
package; `make test` installs it, as root, when absent), 4 pipelines registering at once.

PostgreSQL runs from a temp dir as the `postgres` user (initdb refuses root), on a loopback
port, and is stopped by its PID. The 4 pipelines are 4 copies of one finished tiny project,
each with a model of its own, running their register step as 4 processes at the same moment.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_project, free_port, stop_group, wait_for_http

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
NAME = "distillery-student"
PIPELINES = 4


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        reason = ("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb missing); as root: "
                  "`make postgresql` or `apt-get install -y postgresql`")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(f"SKIPPED LOUDLY: {reason}")
    return Path(found[-1]).parent


def as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture()
def postgres():
    """A PostgreSQL server in a temp dir on 127.0.0.1; yields its SQLAlchemy URI for database `mlflow`."""
    bindir = pg_bin()
    # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="distillery-pg-"))
    data, port = base / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    pid = None
    try:
        subprocess.run(as_postgres([str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                                    "--no-sync"]), check=True, capture_output=True)
        subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                       check=True, capture_output=True)
        pid = int((data / "postmaster.pid").read_text().split()[0])
        subprocess.run(as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                    "mlflow"]), check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGINT)  # "fast" shutdown of the postmaster (and its backends)
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                    time.sleep(0.2)
                except ProcessLookupError:
                    break
        shutil.rmtree(base, ignore_errors=True)


def register_here(root: Path) -> None:
    """One pipeline's register step (what the flow's register task runs), for the child processes."""
    from distillery.config import load_params
    from tasks import tracking
    from tasks.register import register_model

    params = load_params(root / "params.yaml")
    uri = tracking.tracking_uri(root, params)

    def attempt():
        client = tracking.client_for(root, params)
        exp = tracking.experiment_id(client, root, params)
        parent = client.create_run(exp, run_name=f"pipeline-{root.name}").info.run_id
        return register_model(root, params, client, exp, parent, None)

    record = tracking.with_store_retries(attempt, uri, params.register.retries, params.register.retry_backoff_s,
                                         "registration")
    print(json.dumps({"version": record["version"], "promoted": record["promoted"]}))


def test_four_pipelines_register_at_once_on_a_postgres_backed_server(postgres, finished_project, tmp_path):
    from mlflow import MlflowClient

    from tasks.promotion import history
    from tasks.register import aliases_by_version

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", postgres, "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        wait_for_http(f"{uri}/health", server, timeout=180)
        projects = []
        for i in range(PIPELINES):
            p = copy_project(finished_project, tmp_path / f"pipeline{i}")
            raw = yaml.safe_load((p / "params.yaml").read_text())
            raw["register"]["tracking_uri"] = uri
            (p / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            (p / "models" / "quantized" / "variant.txt").write_text(f"pipeline {i}")  # a model of its own
            projects.append(p)
        runs = [subprocess.Popen([sys.executable, "-m", "tests.test_registry_postgres", str(p)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in projects]
        outputs = [r.communicate(timeout=900)[0] for r in runs]
        for r, out in zip(runs, outputs):
            assert r.returncode == 0, out[-3000:]
        records = [json.loads(out.strip().splitlines()[-1]) for out in outputs]

        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = {str(v.version): v.tags for v in c.search_model_versions(f"name='{NAME}'")}
        assert sorted(versions, key=int) == [str(i) for i in range(1, PIPELINES + 1)]  # each exactly once
        assert sorted(r["version"] for r in records) == sorted(versions)
        md5s = [t["model_md5"] for t in versions.values()]
        assert len(set(md5s)) == PIPELINES
        for v, tags in versions.items():
            assert tags.get("registration") == "complete", (v, tags)
            for key in ("git_commit", "params_hash", "model_md5", "gate_decision", "metric.accuracy"):
                assert key in tags, (v, key)
        aliases = aliases_by_version(c, NAME)
        champions = [v for v, a in aliases.items() if "champion" in a]
        assert len(champions) == 1
        moves = history(c, NAME)
        assert moves and moves[0]["from"] is None
        for before, after in zip(moves, moves[1:]):
            assert after["from"] == before["version"]
        assert moves[-1]["version"] == champions[0]
        assert [m["version"] for m in moves] == [r["version"] for r in sorted(records, key=lambda r: int(r["version"]))
                                                 if r["promoted"]]
    finally:
        stop_group(server)


if __name__ == "__main__":  # one pipeline's register step: python -m tests.test_registry_postgres PROJECT
    register_here(Path(sys.argv[1]))
