"""Interrupts (issue 21): SIGTERM to a real run's process group during validate, distill and register
stops it within seconds with exit code 143, one line, no traceback, no process left, the registry
consistent; then a normal run completes. And DVC lock files a killed run left are cleared at the
next start only when no live process holds them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
