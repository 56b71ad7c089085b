"""The DVC remote: push what a run produced, pull it into another clone.

The remote itself (its URL, type and credentials) is declared once, in DVC's own config
(`.dvc/config`, committed; secrets in `.dvc/config.local`, which git ignores), so every DVC
remote type and option works unchanged and `dvc push` / `dvc pull` agree with the flow.
params.yaml's `remote` section says only what the flow does with it (push or not, which one).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from distillery.errors import DistilleryError


class RemoteError(DistilleryError, RuntimeError):
    """A push or pull failed, or no remote is configured; the message names the remote."""


def describe_remote(root: Path, name: str | None) -> tuple[str, str] | None:
    """(name, url) of the named remote, or of the default one; None when none is configured."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = name or repo.config["core"].get("remote")
        if not name:
            return None
        conf = repo.config["remote"].get(name)
        if conf is None:
            raise RemoteError(f"DVC remote {name!r} is not configured (`dvc remote list` shows those that are)")
        url = conf["url"]
        if "://" not in url and not Path(url).is_absolute():  # a local path: relative to .dvc/
            url = str((Path(root) / ".dvc" / url).resolve())
        return name, url


def _dvc(root: Path, action: str, name: str | None):
    from dvc.repo import Repo

    remote = describe_remote(root, name)
    if remote is None:
        raise RemoteError(f"dvc {action}: no DVC remote configured: add one with `dvc remote add -d NAME URL` "
                          "(see the README, 'Sharing data and models')")
    logging.getLogger("dvc").setLevel(logging.WARNING)
    try:
        with contextlib.chdir(root), Repo(str(root)) as repo:
            if action == "push":
                return remote, repo.push(remote=remote[0])
            return remote, repo.pull(remote=remote[0])
    except Exception as exc:  # DvcException, OSError, or a storage backend's own (botocore, asyncssh...)
        raise RemoteError(f"dvc {action} {'to' if action == 'push' else 'from'} remote {remote[0]!r} "
                          f"({remote[1]}) failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def push_outputs(root: Path, name: str | None = None) -> dict:
    """Upload every stage output in dvc.lock (data, models, reports) that the remote lacks."""
    (remote, url), pushed = _dvc(Path(root), "push", name)
    return {"remote": remote, "url": url, "files": int(pushed or 0)}


def pull_outputs(root: Path, name: str | None = None) -> dict:
    """Download and check out every stage output recorded in dvc.lock."""
    (remote, url), result = _dvc(Path(root), "pull", name)
    stats = result.get("stats", {}) if isinstance(result, dict) else {}
    return {"remote": remote, "url": url, "fetched": int(stats.get("fetched", 0)),
            "added": int(stats.get("added", 0)), "modified": int(stats.get("modified", 0))}
