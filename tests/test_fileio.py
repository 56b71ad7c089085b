"""Atomic writes under a real SIGKILL: the target keeps its old content, the leftover is found."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from distillery.fileio import _umask, remove_leftovers, replace_dir, temp_dir_for, write_atomically


def killed_while(tmp_path, body: str) -> None:
    """Run `body` in a child process, wait until it says it is mid-write, SIGKILL it."""
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from distillery.fileio import replace_dir, temp_dir_for, write_atomically
        root = Path({str(tmp_path)!r})
        def mid_write():
            print("mid-write", flush=True)
            time.sleep(120)
    """) + textwrap.dedent(body)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "mid-write"
    finally:
        child.kill()
        child.wait(timeout=30)


def test_killed_file_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text('{"old": true}')
    killed_while(tmp_path, """
        def write(tmp):
            tmp.write_text('{"new": ')
            mid_write()
        write_atomically(root / "report.json", write)
    """)
    assert target.read_text() == '{"old": true}'
    [leftover] = [p for p in tmp_path.iterdir() if p != target]
    assert leftover.name.startswith(".report.json.") and leftover.read_text() == '{"new": '
    assert remove_leftovers(target) == [leftover]
    assert list(tmp_path.iterdir()) == [target]


def test_killed_directory_write_leaves_the_old_directory(tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    (out / "model.safetensors").write_text("old weights")
    killed_while(tmp_path, """
        tmp = temp_dir_for(root / "student")
        (tmp / "model.safetensors").write_text("half of the new wei")
        mid_write()
        replace_dir(tmp, root / "student")
    """)
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_text() == "old weights"
    assert [p.name.startswith(".student.tmp-") for p in tmp_path.iterdir() if p != out] == [True]
    remove_leftovers(out)
    assert list(tmp_path.iterdir()) == [out]


def test_replace_dir_and_write_atomically(tmp_path):
    out = tmp_path / "d"
    for content in ("one", "two"):
        tmp = temp_dir_for(out)
        (tmp / "f").write_text(content)
        replace_dir(tmp, out)
    assert (out / "f").read_text() == "two" and list(tmp_path.iterdir()) == [out]
    p = write_atomically(tmp_path / "x.txt", lambda t: t.write_text("x"))
    assert p.stat().st_mode & 0o777 == 0o666 & ~_umask()  # what open() would make, not mkstemp's 0600


def test_a_dvc_lock_cut_short_is_set_aside(tmp_path, capsys):
    from flows.pipeline import ensure_dvc

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  validate:\n    cmd: distillery st")  # still YAML
    ensure_dvc(tmp_path)
    assert (tmp_path / "dvc.lock").exists()  # parseable: DVC itself sees which stages changed
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  validate:\n    deps:\n    - path: [unclosed")
    ensure_dvc(tmp_path)
    assert not (tmp_path / "dvc.lock").exists()
    assert [p.name.startswith("dvc.lock.corrupt-") for p in tmp_path.iterdir() if p.name != ".dvc"] == [True]
    assert "every stage runs again" in capsys.readouterr().out
