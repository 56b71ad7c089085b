"""Lineage: what a file, a data set or a model *is*, in DVC's terms, and where it came from.

One answer to "is this data fresh?" and "which model is this?": DVC's content hashes.

- `content_md5(path)` is the one md5 helper of the project. It asks DVC's own hashing
  (`dvc_data`), so a file's value is the md5 of its bytes and a directory's is DVC's tree hash
  (`<md5>.dir`), exactly what `dvc.lock` records for them.
- `recorded_hashes(root, stage)` reads what `dvc.lock` records for a stage, through DVC's API
  (never by parsing the lock file by hand).
- `data_identity` (the data a registered model was trained on: the validate stage's recorded
  deps), `current_data_identity` (the same files hashed now) and `changed_since_validation`
  (their difference) serve the registry's lineage tags, the scheduled-retraining freshness
  check and the flow's guard before a stage that reads the validated data. A model's identity
  (the `model_md5` tag) is `content_md5` of its directory: what `dvc.lock` records for the out.

The validated-data manifest (`distillery.data.check_validated`) stays as the guard of the stages
themselves, for a direct `distillery stage NAME` call that DVC does not supervise; it never decides
whether DVC runs a stage.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from pathlib import Path

VALIDATE_STAGE = "validate"  # the stage whose deps are the user's data files
MISSING = "missing"  # the identity of a file that is not there


def content_md5(path: str | Path) -> str:
    """DVC's hash of a file (md5 of its bytes) or a directory (`<md5>.dir`, DVC's tree hash)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    staging = HashFileDB(MemoryFileSystem(), "/staging")  # dry run: nothing is stored anywhere
    _, _, obj = build(staging, str(Path(path).resolve()), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


def recorded_hashes(root: str | Path, stage: str) -> dict[str, str]:
    """{path: hash} of a stage's deps and outs as `dvc.lock` records them ({} when nothing is recorded)."""
    root = Path(root)
    if not (root / "dvc.lock").is_file():
        return {}
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)
    with contextlib.chdir(root), Repo(str(root), uninitialized=True) as repo:  # DVC resolves paths against the cwd
        for st in repo.index.stages:
            if getattr(st, "name", None) == stage:
                return {str(d.def_path): d.hash_info.value for d in (*st.deps, *st.outs)
                        if d.hash_info and isinstance(d.hash_info.value, str)}
    return {}


def _data_files(params) -> dict[str, str]:
    return {"data_md5_train": params.data.train_path, "data_md5_eval": params.data.eval_path}


def data_identity(root: str | Path, params) -> dict[str, str]:
    """The data the last validated run used: md5 of the train and eval files as `dvc.lock` records
    them for the validate stage ({} when there is no lock yet; "unknown" for a file it does not list)."""
    recorded = recorded_hashes(root, VALIDATE_STAGE)
    if not recorded:
        return {}
    return {key: recorded.get(rel, "unknown") for key, rel in _data_files(params).items()}


def current_data_identity(root: str | Path, params) -> dict[str, str]:
    """The same keys as `data_identity`, for the files as they are now."""
    return {key: content_md5(Path(root) / rel) if (Path(root) / rel).is_file() else MISSING
            for key, rel in _data_files(params).items()}


def changed_since_validation(root: str | Path, params) -> list[str]:
    """One line per data file whose bytes differ from what the validate stage last validated
    (per `dvc.lock`); empty when they agree or nothing was validated yet."""
    recorded = data_identity(root, params)
    if not recorded:
        return []
    now = current_data_identity(root, params)
    files = _data_files(params)
    return [f"{files[key]}: changed since it was validated (md5 {recorded[key]} when validated, {now[key]} now)"
            for key in files if recorded[key] != now[key]]


def git_lineage(root: str | Path) -> dict[str, str]:
    """The commit the code came from, and whether tracked files differed from it."""
    def git(*args):
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "none", "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower()}
