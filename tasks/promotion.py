"""Champion history, manual promotion and rollback on the MLflow registry.

The registered model carries two tags:
- `champion_stack`: the versions that were champion, oldest first; the last is the current one.
  A promotion pushes, a rollback pops, so `rollback` returns to the champion before.
- `champion_history`: an append-only audit log of every move (what, from, who, when, why).
Every write happens under the same lock as registration.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import tempfile
from pathlib import Path

from distillery.errors import DistilleryError

CHAMPION = "champion"
STACK_TAG, HISTORY_TAG = "champion_stack", "champion_history"
MAX_ENTRIES = 30  # registry tag values are bounded (a few kB); keep the most recent moves


class PromotionError(DistilleryError, RuntimeError):
    """A promotion or rollback that is refused; the message says why."""


def registry_lock(tracking_uri: str):
    """One lock per registry, not per project: pipelines of several projects on this machine that
    share a registry serialise their writes. Beside the database for SQLite, else in the temp dir."""
    from filelock import FileLock

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):]).with_suffix(".registry.lock")
    else:
        path = Path(tempfile.gettempdir()) / f"distillery-registry-{hashlib.sha1(tracking_uri.encode()).hexdigest()[:12]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=600)


def _read_tag(client, name: str, tag: str) -> list:
    raw = client.get_registered_model(name).tags.get(tag)
    return json.loads(raw) if raw else []


def _write_tag(client, name: str, tag: str, value: list) -> None:
    client.set_registered_model_tag(name, tag, json.dumps(value[-MAX_ENTRIES:]))


def aliases_by_version(client, name: str) -> dict[str, set[str]]:
    """{version: {aliases}}; search results do not carry aliases, the registered model does."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return {}
    out: dict[str, set[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(str(version), set()).add(alias)
    return out


def current_champion(client, name: str) -> str | None:
    for version, aliases in aliases_by_version(client, name).items():
        if CHAMPION in aliases:
            return version
    return None


def move_champion(client, name: str, version: str, *, kind: str, reason: str, user: str | None = None) -> dict:
    """Set `champion` to `version` and record the move. Caller holds the registry lock."""
    previous = current_champion(client, name)
    entry = {"kind": kind, "version": str(version), "from": previous, "reason": reason,
             "by": user or getpass.getuser(), "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    client.set_registered_model_alias(name, CHAMPION, str(version))
    stack = _read_tag(client, name, STACK_TAG)
    if kind == "rollback":
        stack = stack[:-1]
    else:
        if previous is not None and (not stack or stack[-1] != previous):
            stack.append(previous)  # a champion set outside this tool: keep it restorable
        stack.append(str(version))
    _write_tag(client, name, STACK_TAG, stack)
    _write_tag(client, name, HISTORY_TAG, _read_tag(client, name, HISTORY_TAG) + [entry])
    client.set_model_version_tag(name, str(version), "champion_since", entry["at"])
    return entry


def ensure_champion(client, name: str, version: str, *, kind: str, reason: str, user: str | None = None) -> dict | None:
    """`move_champion`, made safe to repeat after a kill part-way through it (alias, stack, history
    are three writes): whatever of the move is already recorded is not recorded twice. Returns the
    history entry written, or None when the move was complete already."""
    version = str(version)
    stack = _read_tag(client, name, STACK_TAG)
    moves = _read_tag(client, name, HISTORY_TAG)
    current = current_champion(client, name)
    if current != version:
        return move_champion(client, name, version, kind=kind, reason=reason, user=user)
    # The alias moved; finish the stack and the history the kill left unwritten.
    if moves and moves[-1].get("version") == version:
        return None
    previous = stack[-2] if stack and stack[-1] == version and len(stack) > 1 else (
        stack[-1] if stack and stack[-1] != version else None)
    if not stack or stack[-1] != version:
        stack.append(version)
        _write_tag(client, name, STACK_TAG, stack)
    entry = {"kind": kind, "version": version, "from": previous, "reason": reason,
             "by": user or getpass.getuser(), "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    _write_tag(client, name, HISTORY_TAG, moves + [entry])
    client.set_model_version_tag(name, version, "champion_since", entry["at"])
    return entry


def promote(tracking_uri: str, client, name: str, version: str, *, force: bool = False, reason: str | None = None) -> dict:
    """`distillery promote VERSION`: refuses a version that failed its gate unless forced with a reason."""
    from mlflow.exceptions import MlflowException

    with registry_lock(tracking_uri):
        try:
            mv = client.get_model_version(name, str(version))
        except MlflowException:
            raise PromotionError(f"{name} has no version {version}") from None
        state = mv.tags.get("registration")
        if state in ("pending", "abandoned"):
            raise PromotionError(f"version {version}'s registration is {state}: it has no recorded decision "
                                 "(`distillery status` completes or abandons interrupted registrations)")
        passed = mv.tags.get("gate_passed") == "true"
        if not passed and not force:
            raise PromotionError(
                f"version {version} failed its gate ({mv.tags.get('gate_reasons', 'no gate record')}); "
                "use --force --reason \"...\" to promote it anyway")
        if force and not reason:
            raise PromotionError("--force needs --reason \"...\": forced promotions are recorded with why")
        if current_champion(client, name) == str(version):
            raise PromotionError(f"version {version} is already the champion")
        kind = "promote" if passed else "forced_promote"
        return move_champion(client, name, str(version), kind=kind,
                             reason=reason or "manual promotion of a version that passed its gate")


def rollback(tracking_uri: str, client, name: str, reason: str | None = None) -> dict:
    """`distillery rollback`: `champion` returns to the version that held it before the current one."""
    with registry_lock(tracking_uri):
        stack = _read_tag(client, name, STACK_TAG)
        current = current_champion(client, name)
        if current is None:
            raise PromotionError(f"{name} has no champion to roll back")
        if len(stack) < 2 or stack[-1] != current:
            raise PromotionError(f"{name}: no earlier champion recorded before version {current}")
        return move_champion(client, name, stack[-2], kind="rollback",
                             reason=reason or f"rollback from version {current}")


def history(client, name: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    try:
        return _read_tag(client, name, HISTORY_TAG)
    except MlflowException:
        return []
