"""Stopping a run on SIGTERM / SIGINT within seconds, and clearing what a killed run left behind.

`timeout`, systemd, Kubernetes and Ctrl-C send SIGTERM or SIGINT, often to the whole process
group. A run then:
- raises `Interrupted` in the main thread (a BaseException: no `except Exception` swallows it,
  and Prefect does not retry a task on it), so every `finally` runs and the MLflow run is closed;
- keeps its temporary Prefect API alive until the flow has recorded the end (the server runs in a
  session of its own, out of the signalled group, and is stopped by PID afterwards: see
  `flows.prefect_api.own_prefect_api`), instead of retrying a dead API for minutes;
- stops its remaining child processes by PID (DVC's stage command and anything it started);
- exits 130 (SIGINT) or 143 (SIGTERM) with one line saying so.

Outputs are written atomically (distillery/fileio.py), so an interrupted stage leaves the old
output or none, and its temp files are removed when it next runs. DVC's own lock files are
checked at the next start (`clear_stale_dvc_locks`): cleared only when no live process holds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from distillery.errors import DistilleryError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LockHeld(DistilleryError, RuntimeError):
    """A live process holds DVC's repo lock: this run would fail on it; the message names the holder."""


class Interrupted(BaseException):
    """The run was asked to stop by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def install_handlers() -> dict:
    """SIGTERM and SIGINT raise `Interrupted` in the main thread (Python's default for SIGTERM
    would end the process at once, with no `finally`, no MLflow status and no exit message).
    Returns the handlers replaced, to restore."""
    return {sig: signal.signal(sig, _raise_interrupted) for sig in SIGNALS}


@contextlib.contextmanager
def deferred():
    """Hold SIGTERM / SIGINT until the block ends (a registry write is one transaction; it takes a
    few seconds). A second signal of the same kind interrupts at once. Main thread only."""
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def hold(signum, frame):
        if signum in received:  # asked twice: stop now
            raise Interrupted(signum)
        received.append(signum)
        print(f"{signal.Signals(signum).name} received: stopping once the registry write is complete "
              "(send it again to stop at once)", flush=True)

    for sig in SIGNALS:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:  # delivered to whatever handler was there before (Prefect's, or ours)
        os.kill(os.getpid(), received[0])


def _stop_signal(exc: BaseException | None) -> int | None:
    """The signal a stop exception stands for: ours (`Interrupted`), Ctrl-C's KeyboardInterrupt, or
    a library's own form of it (Prefect's TerminationSignal carries `.signal`), else None."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(exc, BaseException) and not isinstance(exc, Exception):
        signum = getattr(exc, "signal", None)
        if isinstance(signum, int) and signum in SIGNALS:
            return signum
    return None


@contextlib.contextmanager
def stop_requests() -> Callable[[], int | None]:
    """Record every SIGTERM / SIGINT that reaches this process while the block runs; yields a
    function returning the first one (or None). Main thread only.

    A signal's Python handler runs between two bytecodes of the main thread, wherever it is: when
    that is inside a finalizer (an asyncio transport's `__del__`, say), the exception the handler
    raises (ours, or Prefect's TerminationSignal inside a flow) cannot propagate: Python prints
    "Exception ignored in ..." and the run goes on as if nothing had been asked. Two records catch
    it: the wakeup fd, to which the interpreter writes each signal's number before any Python
    handler runs (so a signal swallowed anywhere is still seen), and `sys.unraisablehook`, which
    takes such a stop exception silently instead of printing its traceback. The caller ends with
    the signal's exit code when a run completed while a stop request was pending."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    seen: list[int] = []
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        signum = _stop_signal(unraisable.exc_value)
        if signum is None:
            previous_hook(unraisable)
        else:
            seen.append(signum)

    def pending() -> int | None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while data := reader.recv(4096):
                seen.extend(data)
        return next((s for s in seen if s in SIGNALS), None)

    sys.unraisablehook = hook
    try:
        yield pending
    finally:
        sys.unraisablehook = previous_hook
        current = signal.set_wakeup_fd(previous_fd)
        if current != writer.fileno():  # somebody else's since: leave theirs in place
            signal.set_wakeup_fd(current)
        reader.close()
        writer.close()


def stop_children(timeout: float = 5.0, exclude: set[int] | None = None) -> list[int]:
    """Terminate every descendant of this process by PID (SIGTERM, then SIGKILL after `timeout`):
    DVC's stage command and what it started, when the signal reached this process only."""
    import psutil

    procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in (exclude or set())]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in procs]


def exit_code_for_stage(returncode: int) -> int | None:
    """The signal that ended a stage command, from its exit status (-15 / 143, -2 / 130), or None."""
    for sig in SIGNALS:
        if returncode in (-sig, 128 + sig):
            return int(sig)
    return None


# --------------------------------------------------------------------------- stale DVC locks


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@contextlib.contextmanager
def _probe(lock_path: Path):
    """Take DVC's lock file (zc.lockfile: an fcntl lock, held only by a live process) without
    waiting; yields True when taken (nobody holds it), False when a live process holds it."""
    import zc.lockfile

    try:
        held = zc.lockfile.LockFile(str(lock_path))
    except zc.lockfile.LockError:
        yield False
        return
    try:
        yield True
    finally:
        held.close()


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError):
        pid = lock_path.read_text().strip()
        if pid.isdigit():
            return f"PID {pid}"
    return "another process"


def clear_stale_dvc_locks(root: Path) -> list[str]:
    """Clear DVC lock state that a killed run left in `.dvc/tmp`, when no live process holds it.

    - `rwlock` (which outputs a DVC command is reading/writing, with its PID): a killed writer can
      leave it empty or cut short, and every later `dvc repro` then fails with a bare "failed to
      reproduce". Checked under DVC's own `rwlock.lock` (taken without waiting, as a probe): an
      unreadable file is removed; entries whose PID is gone are dropped. Left alone if the probe
      finds the lock held, or an entry's process is alive.
    - `lock` (the repo lock) is an fcntl lock: a killed holder releases it, so a leftover file is
      harmless; a live holder is reported (the run would fail on it), never removed.
    Returns one line per thing cleared; raises LockHeld naming a live holder of the repo lock.
    """
    tmp = Path(root) / ".dvc" / "tmp"
    cleared: list[str] = []
    if not tmp.is_dir() or _hardlink_locks(Path(root)):
        return cleared
    repo_lock = tmp / "lock"
    if repo_lock.exists():
        with _probe(repo_lock) as free:
            if not free:
                raise LockHeld(f"dvc: {repo_lock.relative_to(root)} is held by {_holder(repo_lock)}, a DVC "
                                   "command running in this project; wait for it to finish (or stop it)")
    rwlock = tmp / "rwlock"
    if not rwlock.exists():
        return cleared
    with _probe(tmp / "rwlock.lock") as free:
        if not free:
            return cleared  # a live DVC process is editing it right now
        rel = rwlock.relative_to(root)
        try:
            data = json.loads(rwlock.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError):
            size = rwlock.stat().st_size
            rwlock.unlink()
            what = "empty" if size == 0 else f"unreadable ({size} bytes)"
            cleared.append(f"dvc: removed {rel}: {what}, left by a killed run; no live process holds it")
            return cleared
        dead: set[int] = set()
        kept: dict = {}
        for mode, entries in data.items():
            if not isinstance(entries, dict):
                kept[mode] = entries
                continue
            kept[mode] = {}
            for path, infos in entries.items():
                many = isinstance(infos, list)
                live = []
                for info in infos if many else [infos]:
                    pid = info.get("pid") if isinstance(info, dict) else None
                    if isinstance(pid, int) and not _pid_alive(pid):
                        dead.add(pid)
                    else:
                        live.append(info)
                if live:
                    kept[mode][path] = live if many else live[0]
        if dead:
            if any(kept.get(m) for m in ("read", "write")):
                from distillery.fileio import write_atomically

                write_atomically(rwlock, lambda t: t.write_text(json.dumps(kept)))
            else:
                rwlock.unlink()
            pids = ", ".join(str(p) for p in sorted(dead))
            cleared.append(f"dvc: cleared {rel} entries of killed process(es) {pids}; no live process holds them")
    return cleared


def _hardlink_locks(root: Path) -> bool:
    """`core.hardlink_lock` (for filesystems without fcntl locks): the probe above would not apply."""
    for name in ("config", "config.local"):
        with contextlib.suppress(OSError):
            if "hardlink_lock" in (root / ".dvc" / name).read_text():
                return True
    return False
