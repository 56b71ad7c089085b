"""The DVC remote: a run pushes what it produced; a second clone pulls it and then trains nothing.

Two git clones of one tiny project and one remote directory, as two colleagues would have them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_project, tiny_params

DVC = [sys.executable, "-m", "dvc"]
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def sh(cwd: Path, *cmd: str) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def tracked_files(root: Path) -> dict[str, bytes]:
    """Every file under the stage output folders, by relative path."""
    return {str(f.relative_to(root)): f.read_bytes() for d in ("data", "models", "reports")
            for f in sorted((root / d).rglob("*")) if f.is_file()}


@pytest.mark.slow
def test_second_clone_pulls_and_trains_nothing(tmp_path, prefect_harness):
    """Cost: one tiny pipeline run plus a no-change run (~60-90 s on 2 shared cores)."""
    from distillery.code_deps import link_code
    from distillery.demo_data import make_demo_dataset
    from distillery.env import configure_environment
    from flows.pipeline import pipeline
    from distillery_cli.cli import main

    params = tiny_params()
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    origin = make_project(tmp_path / "origin", params, [*train.text, *eval_.text])
    remote = tmp_path / "remote"
    sh(origin, *DVC, "init", "-q")
    sh(origin, *DVC, "remote", "add", "-d", "team", str(remote))
    sh(origin, "git", "add", "-f", ".dvc", "teacher_src")  # the teacher source travels by git here
    sh(origin, "git", *GIT_ID, "commit", "-qm", "dvc remote")

    first = tmp_path / "first"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(first))
    link_code(first)  # dvc.yaml's code deps (a real project's clone holds its code; this one links it)
    configure_environment(first)
    result = pipeline(project_dir=str(first))
    assert all(result["ran"].values())
    assert result["pushed"]["remote"] == "team" and result["pushed"]["files"] > 0
    assert any(remote.rglob("*")), "nothing reached the remote"
    sh(first, "git", "add", "dvc.lock")
    sh(first, "git", *GIT_ID, "commit", "-qm", "run")

    second = tmp_path / "second"
    sh(tmp_path, "git", "clone", "-q", str(first), str(second))
    link_code(second)
    assert not (second / "models").exists()
    assert main(["--project-dir", str(second), "pull"]) == 0
    produced = tracked_files(first)
    pulled = tracked_files(second)
    for rel in ("models/quantized/model.onnx", "data/teacher_logits", "reports/gate.json", "reports/distill.json"):
        assert any(p.startswith(rel) for p in pulled), f"{rel} not pulled"
    assert {k: v for k, v in pulled.items() if k in produced} == {k: produced[k] for k in pulled if k in produced}

    again = pipeline(project_dir=str(second))
    assert not any(again["ran"].values()), f"the pulled clone retrained: {again['ran']}"
    assert again["pushed"]["files"] == 0  # the remote already holds everything


def test_push_failure_names_the_remote(tmp_path):
    """A remote that cannot be written: the error names it and its URL (no pipeline; ~3 s)."""
    from tasks.storage import RemoteError, push_outputs

    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, *DVC, "init", "-q")
    (tmp_path / "blocker").write_text("a file where the remote's folder should be\n")
    sh(tmp_path, *DVC, "remote", "add", "-d", "broken", str(tmp_path / "blocker" / "store"))
    (tmp_path / "data.txt").write_text("some data\n")
    sh(tmp_path, *DVC, "add", "-q", "data.txt")
    with pytest.raises(RemoteError, match=r"remote 'broken' \(.*blocker/store\)"):
        push_outputs(tmp_path)


def test_no_remote_is_an_error_for_pull(tmp_path):
    from tasks.storage import RemoteError, pull_outputs

    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, *DVC, "init", "-q")
    with pytest.raises(RemoteError, match="no DVC remote configured"):
        pull_outputs(tmp_path)
