"""distillery/lineage.py: identities are DVC's hashes, read from dvc.lock through DVC's API. ~3 s."""

from __future__ import annotations

import contextlib
import hashlib
from types import SimpleNamespace

from distillery.lineage import (MISSING, changed_since_validation, content_md5, current_data_identity, data_identity,
                                recorded_hashes)

PARAMS = SimpleNamespace(data=SimpleNamespace(train_path="incoming/train.csv", eval_path="incoming/eval.csv"))


def locked_project(root):
    """A DVC project whose validate stage read the two data files and wrote a model directory,
    recorded in dvc.lock by `dvc commit` (DVC hashes them itself)."""
    from dvc.repo import Repo

    (root / "incoming").mkdir()
    (root / "incoming/train.csv").write_bytes(b"text,label\r\nfine,positive\n")
    (root / "incoming/eval.csv").write_text("text,label\nbad,negative\n")
    (root / "model/sub").mkdir(parents=True)
    (root / "model/config.json").write_text("{}")
    (root / "model/sub/weights.bin").write_bytes(bytes(range(256)))
    (root / "dvc.yaml").write_text("stages:\n  validate:\n    cmd: 'true'\n    deps:\n      - incoming/train.csv\n"
                                   "      - incoming/eval.csv\n    outs:\n      - model\n")
    Repo.init(str(root), no_scm=True)
    with contextlib.chdir(root), Repo(str(root)) as repo:
        repo.commit("validate", force=True)
    return root


def test_a_file_is_the_md5_of_its_bytes_and_a_directory_dvcs_tree_hash(tmp_path):
    root = locked_project(tmp_path)
    assert content_md5(root / "incoming/train.csv") == hashlib.md5(b"text,label\r\nfine,positive\n").hexdigest()
    recorded = recorded_hashes(root, "validate")
    assert recorded == {"incoming/train.csv": content_md5(root / "incoming/train.csv"),
                        "incoming/eval.csv": content_md5(root / "incoming/eval.csv"),
                        "model": content_md5(root / "model")}  # what the registry tags as model_md5
    assert recorded["model"].endswith(".dir")
    (root / "model/sub/weights.bin").write_bytes(b"retrained")
    assert content_md5(root / "model") != recorded["model"]
    assert recorded_hashes(root, "no_such_stage") == {}


def test_data_identity_comes_from_the_lock_and_freshness_from_the_files_now(tmp_path):
    root = locked_project(tmp_path)
    assert data_identity(root, PARAMS) == current_data_identity(root, PARAMS)
    assert changed_since_validation(root, PARAMS) == []
    (root / "incoming/train.csv").write_text("text,label\nfine,positive\nnew,negative\n")
    assert data_identity(root, PARAMS)["data_md5_train"] != current_data_identity(root, PARAMS)["data_md5_train"]
    [line] = changed_since_validation(root, PARAMS)
    assert line.startswith("incoming/train.csv: changed since it was validated (md5 ")
    (root / "incoming/eval.csv").unlink()
    assert current_data_identity(root, PARAMS)["data_md5_eval"] == MISSING
    assert len(changed_since_validation(root, PARAMS)) == 2


def test_nothing_recorded_yet_is_not_a_change(tmp_path):
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming/train.csv").write_text("x\n")
    assert data_identity(tmp_path, PARAMS) == {} and changed_since_validation(tmp_path, PARAMS) == []
