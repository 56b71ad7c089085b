"""Store outages: registration against a real `mlflow server` that goes away and comes back.

Connection errors are retried (bounded, doubling waits), validation errors are not; when the
server stays away the run fails with a message naming it and the models and reports stay on
disk; a registration cut off in the middle by a server restart is settled by its own retry and
the model is registered exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_project, free_port, stop_group, wait_for_http

BIN = Path(sys.executable).parent
NAME = "distillery-student"


# --- the retry rule, on exceptions as MLflow raises them (fast) ---------------------------------

def _mlflow_connection_error():
    import requests
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise requests.exceptions.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries "
                                                      "exceeded (Caused by NewConnectionError: Connection refused)")
        except Exception as e:  # MLflow wraps it like this (rest_utils.http_request), cause kept as context
            raise MlflowException(f"API request to http://127.0.0.1:9/api/2.0/x failed with exception {e}")
    except MlflowException as wrapped:
        return wrapped


def test_only_connection_errors_are_retried_then_a_failure_names_the_uri(monkeypatch):
    from mlflow.exceptions import MlflowException

    from tasks.tracking import RegistryUnavailable, is_connection_error, with_store_retries

    assert is_connection_error(_mlflow_connection_error())
    assert is_connection_error(ConnectionRefusedError(111, "refused"))
    invalid = MlflowException("INVALID_PARAMETER_VALUE: Registered model name must not be empty")
    assert not is_connection_error(invalid)

    calls, waits = [], []
    monkeypatch.setattr(time, "sleep", waits.append)

    def down():
        calls.append(1)
        raise _mlflow_connection_error()

    with pytest.raises(RegistryUnavailable, match=r"http://127\.0\.0\.1:9 unreachable: registration failed 3 time"):
        with_store_retries(down, "http://127.0.0.1:9", attempts=3, backoff_s=5.0, what="registration")
    assert len(calls) == 3 and waits == [5.0, 10.0]  # bounded, and the wait doubles

    calls.clear()

    def refused():
        calls.append(1)
        raise invalid

    with pytest.raises(MlflowException, match="INVALID_PARAMETER_VALUE"):
        with_store_retries(refused, "http://127.0.0.1:9", attempts=3, backoff_s=0.05, what="registration")
    assert len(calls) == 1  # a refused request is not retried

    flaky = iter([_mlflow_connection_error(), None])

    def back_soon():
        exc = next(flaky)
        if exc:
            raise exc
        return "registered"

    assert with_store_retries(back_soon, "http://x", attempts=3, backoff_s=0.01, what="registration") == "registered"


# --- a real server, stopped and restarted -------------------------------------------------------

class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite store in a temp dir; stop() ends its process group."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.proc = tmp, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.tmp / 'server.db'}",
             "--artifacts-destination", str(self.tmp / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
        wait_for_http(f"{self.uri}/health", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        self.proc = None


def registry(uri: str) -> dict[str, dict]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {str(v.version): dict(v.tags) for v in c.search_model_versions(f"name='{NAME}'")}


def register(root: Path, attempts: int, backoff_s: float) -> dict:
    """The flow's register task body: the registration under bounded store retries."""
    from distillery.config import load_params
    from tasks import tracking
    from tasks.register import register_model

    params = load_params(root / "params.yaml")
    uri = tracking.tracking_uri(root, params)

    def attempt():
        client = tracking.client_for(root, params)
        exp = tracking.experiment_id(client, root, params)
        parent = client.create_run(exp, run_name="outage-test").info.run_id
        return register_model(root, params, client, exp, parent, None)

    return tracking.with_store_retries(attempt, uri, attempts, backoff_s, "registration")


@pytest.mark.slow
def test_registration_survives_a_server_outage_and_registers_once(finished_project, tmp_path, monkeypatch):
    import tasks.register as reg
    from tasks.tracking import RegistryUnavailable

    server = Server(tmp_path)
    root = copy_project(finished_project, tmp_path / "p")
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["register"]["tracking_uri"] = server.uri
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # each request gives up fast; the test's
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # own retries are what is under test
    variant = root / "models" / "quantized" / "variant.txt"
    try:
        # 1. The server is down: bounded retries, then a failure naming it; the files stay.
        variant.write_text("first")
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match=f"{server.uri} unreachable"):
            register(root, 3, 0.5)
        assert time.monotonic() - started < 120
        for f in ("models/quantized/model.onnx", "reports/quantize.json", "reports/gate.json"):
            assert (root / f).is_file(), f

        # 2. Up: the re-run registers the model exactly once.
        server.start()
        rec = register(root, 3, 0.5)
        assert rec["new_version"] and rec["version"] == "1"
        assert register(root, 3, 0.5)["new_version"] is False  # and a second re-run registers nothing
        assert len(registry(server.uri)) == 1

        # 3. The server restarts in the middle of a registration (right after the version is created):
        # the write that fails is retried with the whole registration, which first settles its own
        # pending version (no decision recorded yet: abandoned) and then registers the model once.
        variant.write_text("third")
        real_fault_point = reg.fault_point

        def restart_after_create(step: str) -> None:
            real_fault_point(step)
            if step == "after_create" and not restarted.is_set():
                restarted.set()
                server.stop()
                threading.Timer(2.0, server.start).start()

        restarted = threading.Event()
        monkeypatch.setattr(reg, "fault_point", restart_after_create)
        rec = register(root, 6, 2.0)
        assert restarted.is_set() and rec["new_version"]
        versions = registry(server.uri)
        third = versions[rec["version"]]["model_md5"]
        same = {v: t.get("registration") for v, t in versions.items() if t["model_md5"] == third}
        assert sorted(same.values()) == ["abandoned", "complete"], same
        assert [v for v, state in same.items() if state == "complete"] == [rec["version"]]
        from mlflow import MlflowClient

        from tasks.register import aliases_by_version

        aliases = aliases_by_version(MlflowClient(tracking_uri=server.uri, registry_uri=server.uri), NAME)
        abandoned = [v for v, state in same.items() if state == "abandoned"][0]
        assert not aliases.get(abandoned)
    finally:
        server.stop()
