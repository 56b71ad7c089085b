"""Interrupts (issue 21): SIGTERM to a real run's process group during validate, distill and register
stops it within seconds with exit code 143, one line, no traceback, no process left, the registry
consistent; then a normal run completes. And DVC lock files a killed run left are cleared at the
next start only when no live process holds them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from distillery.interrupts import LockHeld, clear_stale_dvc_locks

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- stale DVC locks (cheap)


@pytest.fixture
def dvc_tmp(tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    return tmp_path


def hold_lock(path: Path) -> subprocess.Popen:
    """A live process holding `path` the way DVC does (zc.lockfile); stopped by the test."""
    code = ("import sys, time, zc.lockfile; lock = zc.lockfile.LockFile(sys.argv[1]); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_empty_rwlock_left_by_a_killed_run_is_cleared_with_a_message(dvc_tmp):
    rwlock = dvc_tmp / ".dvc/tmp/rwlock"
    rwlock.write_text("")  # what a run killed while DVC rewrote it leaves
    assert clear_stale_dvc_locks(dvc_tmp) == [
        "dvc: removed .dvc/tmp/rwlock: empty, left by a killed run; no live process holds it"]
    assert not rwlock.exists()
    assert clear_stale_dvc_locks(dvc_tmp) == []  # nothing left to clear


def test_rwlock_entries_of_dead_processes_are_dropped_live_ones_kept(dvc_tmp):
    rwlock = dvc_tmp / ".dvc/tmp/rwlock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        rwlock.write_text(json.dumps({"write": {"models/a": {"pid": dead.pid, "cmd": "dvc repro"},
                                                "models/b": {"pid": live.pid, "cmd": "dvc repro"}},
                                      "read": {"data/x": [{"pid": dead.pid, "cmd": "dvc repro"}]}}))
        lines = clear_stale_dvc_locks(dvc_tmp)
        assert lines == [f"dvc: cleared .dvc/tmp/rwlock entries of killed process(es) {dead.pid}; "
                         "no live process holds them"]
        assert json.loads(rwlock.read_text()) == {"write": {"models/b": {"pid": live.pid, "cmd": "dvc repro"}},
                                                  "read": {}}
    finally:
        live.kill()
        live.wait()


def test_rwlock_being_edited_by_a_live_process_is_left_alone(dvc_tmp):
    rwlock = dvc_tmp / ".dvc/tmp/rwlock"
    rwlock.write_text("")  # mid-write by the live holder of rwlock.lock
    holder = hold_lock(dvc_tmp / ".dvc/tmp/rwlock.lock")
    try:
        assert clear_stale_dvc_locks(dvc_tmp) == []
        assert rwlock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert clear_stale_dvc_locks(dvc_tmp)[0].startswith("dvc: removed .dvc/tmp/rwlock")  # its holder is gone


def test_repo_lock_held_by_a_live_process_is_named_not_removed(dvc_tmp):
    lock = dvc_tmp / ".dvc/tmp/lock"
    holder = hold_lock(lock)
    try:
        with pytest.raises(LockHeld, match=rf"\.dvc/tmp/lock is held by PID {holder.pid}"):
            clear_stale_dvc_locks(dvc_tmp)
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert clear_stale_dvc_locks(dvc_tmp) == []  # a leftover file of a dead holder is no lock at all


def test_a_signal_during_a_registry_write_waits_for_its_end():
    from distillery.interrupts import Interrupted, deferred, install_handlers

    previous = install_handlers()
    steps = []
    try:
        with pytest.raises(Interrupted, match="interrupted by SIGTERM") as exc:
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
                steps.append("write finished")  # the transaction is not cut in the middle
        assert exc.value.exit_code == 143 and steps == ["write finished"]
        with pytest.raises(Interrupted):  # asked twice: stops at once
            with deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
                steps.append("not reached")
        assert steps == ["write finished"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _SignalsInFinalizer:
    """An object whose finalizer is where the signal's handler runs: what an asyncio transport's
    `__del__` did in a real run, so that the handler's exception could not propagate."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the handler runs between two of these bytecodes
            pass


def test_a_signal_whose_exception_a_finalizer_swallows_is_still_seen(capfd):
    from distillery.interrupts import install_handlers, stop_requests

    previous = install_handlers()
    try:
        with stop_requests() as pending:
            assert pending() is None
            _SignalsInFinalizer()  # dropped at once: __del__ runs, the handler raises inside it
            steps = ["went on"]  # the exception was swallowed: the code goes on, as it did in the run
            assert pending() == signal.SIGTERM
        assert steps == ["went on"]
        err = capfd.readouterr().err
        assert "Exception ignored" not in err and "Traceback" not in err, err
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Without the record, the same exception goes to the unraisable hook (Python's default prints
    # "Exception ignored in ..." with a traceback) and nothing else sees it.
    lost = []
    previous, hook = install_handlers(), sys.unraisablehook
    sys.unraisablehook = lambda u: lost.append(u.exc_value)
    try:
        _SignalsInFinalizer()
        steps.append("went on unaware")
    finally:
        sys.unraisablehook = hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert [type(e).__name__ for e in lost] == ["Interrupted"] and steps[-1] == "went on unaware"


def test_the_cli_exits_143_when_a_run_completes_with_a_lost_sigterm():
    # In a process of its own: after a signal the CLI stops its child processes, and pytest's
    # (a shared Prefect server, say) must not be among them.
    code = textwrap.dedent("""
        import signal, sys
        from distillery_cli import cli
        from tests.test_interrupts import _SignalsInFinalizer

        def lost_signal_run(args):
            _SignalsInFinalizer()
            return 0

        real = cli.build_parser

        def parser():
            p = real()
            p._subparsers._group_actions[0].choices["run"].set_defaults(func=lost_signal_run)
            return p

        cli.build_parser = parser
        before = signal.getsignal(signal.SIGTERM)
        code = cli.main(["run"])
        assert signal.getsignal(signal.SIGTERM) is before and signal.set_wakeup_fd(-1) == -1
        sys.exit(code)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 143, out.stdout + out.stderr
    assert "distillery run: interrupted by SIGTERM (exit 143); it came as the run was finishing" in out.stderr, \
        out.stderr
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


def test_a_stage_stopped_by_a_signal_interrupts_the_run():
    """Ctrl-C reaches DVC's stage command; DVC ignores SIGINT in the run itself and reports
    "exited with 130": the run takes it as the interrupt it is, not as a failed stage."""
    from dvc.repo.reproduce import ReproductionError
    from dvc.stage.exceptions import StageCmdFailedError

    from flows.pipeline import _stage_signal

    def failed(status):
        try:
            try:
                raise StageCmdFailedError("distillery stage distill", status)
            except StageCmdFailedError as inner:
                raise ReproductionError("failed to reproduce 'distill'") from inner
        except ReproductionError as exc:
            return exc

    assert _stage_signal(failed(130)) == signal.SIGINT
    assert _stage_signal(failed(-15)) == signal.SIGTERM and _stage_signal(failed(143)) == signal.SIGTERM
    assert _stage_signal(failed(1)) is None


# --------------------------------------------------------------------------- real runs (slow)

DISTILL_EPOCHS = 40  # ~0.2 s each on the tiny model: the signal lands inside training


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    from distillery.env import configure_environment
    from distillery.demo_data import make_demo_dataset
    from tests.helpers import make_project, tiny_params

    params = tiny_params(data={"train_path": "incoming/train.csv", "eval_path": "incoming/eval.csv"},
                         distill={"epochs": DISTILL_EPOCHS})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("interrupts"), params, list(train.text) + list(eval_.text))
    (root / "incoming").mkdir()
    train.to_csv(root / "incoming/train.csv", index=False)
    eval_.to_csv(root / "incoming/eval.csv", index=False)
    configure_environment(root)
    return root


def run_env(own_prefect_server: bool = False) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    if not own_prefect_server:  # the session's test server: cheaper than a temporary one per run
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def sigterm_run(root: Path, when, own_prefect_server: bool = False, timeout: float = 600) -> dict:
    """Start `distillery run` in its own process group, wait until `when(output, descendants)` holds,
    SIGTERM the group (as `timeout`, systemd or Kubernetes do), and report how it ended."""
    log = root.parent / f"run-{time.time_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "distillery"), "--project-dir", str(root), "run"],
                                env=run_env(own_prefect_server), stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    me = psutil.Process(proc.pid)
    deadline, family = time.time() + timeout, set()
    try:
        while not when(log.read_text(), [p.cmdline() for p in _alive(me)]):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"condition not met in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
            family |= {p.pid for p in _alive(me)}
            time.sleep(0.2)
        family |= {p.pid for p in _alive(me)}
        sent = time.time()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    left = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    for pid in left:  # never leave them behind, even when the test fails
        psutil.Process(pid).kill()
    return {"code": proc.returncode, "seconds": took, "output": log.read_text(), "left": left}


def _alive(proc: psutil.Process) -> list[psutil.Process]:
    out = []
    for p in proc.children(recursive=True):
        try:
            p.cmdline()
            out.append(p)
        except psutil.Error:
            pass
    return out


def stage_running(stage: str):
    return lambda output, cmds: any("stage" in c and stage in c for c in cmds)


def assert_interrupted(result: dict) -> None:
    out = result["output"]
    assert result["code"] == 143, out[-3000:]
    assert result["seconds"] < 30, f"took {result['seconds']:.1f} s to stop:\n{out[-3000:]}"
    assert "distillery run: interrupted by SIGTERM (exit 143)" in out, out[-3000:]
    assert "Traceback" not in out and "Connection refused" not in out, out[-3000:]
    assert "Error logging to API" not in out, out[-3000:]  # the API outlived the run's last log
    assert result["left"] == [], f"processes left running: {result['left']}"
    print(f"stopped {result['seconds']:.1f} s after SIGTERM")


@pytest.mark.slow
def test_sigterm_during_validate_stops_at_once(project):
    from tests.test_bad_inputs import pipeline_runs

    result = sigterm_run(project, stage_running("validate"))
    assert_interrupted(result)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert "validate" not in lock and "teacher" not in lock
    [killed] = pipeline_runs(project)
    assert killed.info.status == "KILLED" and killed.data.tags["failure"] == "interrupted by SIGTERM"


@pytest.mark.slow
def test_sigterm_during_distill_with_the_temporary_prefect_server(project):
    """The issue's case: no Prefect server configured, so the run starts a temporary one; it must
    record the end and stop, not die first and leave the run retrying it for minutes."""
    result = sigterm_run(project, lambda output, cmds: "distill: student of" in output, own_prefect_server=True)
    assert_interrupted(result)
    assert "Starting temporary server" in result["output"] or "temporary server" in result["output"].lower()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"validate", "teacher", "soft_targets"} <= set(lock) and "distill" not in lock
    assert not (project / "models/student").exists()


@pytest.mark.slow
def test_sigterm_during_register_leaves_the_registry_consistent(project):
    from tests.test_bad_inputs import registry

    result = sigterm_run(project, lambda output, cmds: "evaluate: ran" in output and time.sleep(1.5) is None)
    assert_interrupted(result)
    reg = registry(project)
    print(f"registered before stopping: {reg['versions']}")
    # The registry write is one transaction: either nothing was registered, or version 1 with all of it.
    assert reg["versions"] in ([], ["1"]), reg
    if reg["versions"]:
        from tasks.register import REGISTRATION_TAG
        from tests.test_bad_inputs import NAME, client

        # Either the signal came during the registry write (held until its end) or after it (the
        # steps after registration: the DVC push, the report): either way the version is whole.
        held = "SIGTERM received: stopping once the registry write is complete" in result["output"]
        after = re.search(r"Task run 'register[^']*' - Finished in state Completed", result["output"])
        assert held or after, result["output"][-3000:]
        assert reg["aliases"]["1"] == {"challenger", "champion"}
        assert client(project).get_model_version(NAME, "1").tags.get(REGISTRATION_TAG) == "complete"


@pytest.mark.slow
def test_a_normal_run_then_completes(project):
    from tests.test_bad_inputs import registry

    # The state an interrupted run can leave to the next start: an empty rwlock.
    (project / ".dvc/tmp/rwlock").write_text("")
    out = subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), "run"], env=run_env(),
                         capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "dvc: removed .dvc/tmp/rwlock: empty, left by a killed run; no live process holds it" in text
    assert "Traceback" not in text
    reg = registry(project)
    assert reg["versions"] == ["1"] and reg["aliases"]["1"] == {"challenger", "champion"}
