"""The Prefect API a command's flows talk to, and how its console reports user errors.

`own_prefect_api()` gives a run (and the processes it starts) a temporary Prefect API server
of its own when no PREFECT_API_URL is set; `quiet_user_errors_on_console()` keeps Prefect
from printing a user's error four times over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
from unittest import mock

from distillery.errors import user_error_names, user_error_types


class _UserErrorsOnce(logging.Filter):
    """Prefect logs a failed task and flow with a traceback and the full message, four times over.
    For errors that are the user's input (bad data, bad params), `distillery run` prints the
    message once itself: on the console, Prefect's records of them are dropped, and its state
    lines keep their first line. (The Prefect API and UI still get every record in full.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, user_error_types()):
            return False
        message = record.getMessage()
        names = user_error_names() | {e.__name__ for e in user_error_types()}
        if any(name in message for name in names) and ("\n" in message or "\\n" in message):
            first = message.replace("\\n", "\n").split("\n")[0]
            record.msg, record.args = f"{first} ...", ()
        return True


def quiet_user_errors_on_console() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                    isinstance(f, _UserErrorsOnce) for f in handler.filters):
                handler.addFilter(_UserErrorsOnce())


def _die_with_parent() -> None:
    """In the server's process before exec (Linux): SIGTERM it when the run dies, even by SIGKILL,
    so a killed run leaves no server behind now that the group signal no longer reaches it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _detached_prefect_server():
    """Prefect's temporary API server, started in a session of its own. Prefect starts it in the
    run's process group, so a SIGTERM / Ctrl-C to the group killed it first, and the run then
    retried the dead API for minutes to record its end. Out of the group, it outlives the flow's
    last API call and is stopped by PID (`server.stop()`) once the run is done."""
    from prefect.server.api.server import SubprocessASGIServer

    class DetachedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            popen = functools.partial(subprocess.Popen, start_new_session=True, preexec_fn=_die_with_parent)
            with mock.patch.object(subprocess, "Popen", popen):
                return super()._run_uvicorn_command()

    return DetachedServer()


@contextlib.contextmanager
def own_prefect_api():
    """With no PREFECT_API_URL set, this process's temporary Prefect API (see
    `_detached_prefect_server`); this process and its children (they inherit the environment) use it.
    The sweep's Dask workers need this too: each would otherwise start a server of its own (~25 s)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    server = _detached_prefect_server()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _drain_prefect_workers()  # the run's last logs and events reach the API before it stops
        server.stop()


def _drain_prefect_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)
