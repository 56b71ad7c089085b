"""Units of scheduled retraining: the data watcher, the change check's decision, stage progress."""

from __future__ import annotations

import hashlib
import json
import os

from distillery.progress import PROGRESS_ENV, read_progress, report_progress
from distillery.lineage import content_md5
from distillery.watch import DataWatcher


def bump(path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a later mtime, whatever the clock


def test_file_md5_is_the_md5_of_the_bytes(tmp_path):
    f = tmp_path / "train.csv"
    f.write_bytes(b"text,label\r\nfine,positive\n")  # no newline normalisation (DVC 3 hashes bytes)
    assert content_md5(f) == hashlib.md5(b"text,label\r\nfine,positive\n").hexdigest()


def test_watcher_reports_new_content_once_when_the_file_holds_still(tmp_path):
    train, eval_ = tmp_path / "train.csv", tmp_path / "eval.csv"
    train.write_text("a\n")
    w = DataWatcher()
    assert w.poll([train, eval_]) == []  # baseline; eval does not exist yet
    assert w.poll([train, eval_]) == []  # nothing changed
    bump(train, "a\nb\n")
    assert w.poll([train, eval_]) == []  # changed, but maybe still being written
    assert w.poll([train, eval_]) == [train]  # held still for one poll: reported
    assert w.poll([train, eval_]) == []  # once
    bump(train, "a\nb\n")  # touched, same bytes: not new data
    assert w.poll([train]) == [] and w.poll([train]) == []
    eval_.write_text("x\n")  # appears
    assert w.poll([train, eval_]) == [] and w.poll([train, eval_]) == [eval_]


def test_watcher_waits_while_a_file_keeps_growing(tmp_path):
    f = tmp_path / "train.csv"
    f.write_text("a\n")
    w = DataWatcher()
    w.poll([f])
    for i in range(3):  # a slow copy: each poll sees another size
        bump(f, "a\n" * (i + 2))
        assert w.poll([f]) == []
    assert w.poll([f]) == [f]


def test_change_check_compares_lineage_and_dvc_status():
    from flows.retrain import compare_with_champion

    now = {"data_md5_train": "aa", "data_md5_eval": "bb", "params_hash": "cc"}
    same = compare_with_champion({**now, "other": "x"}, now, [])
    assert same["changed"] is False and same["reasons"] == [] and all(c["same"] for c in same["checks"])
    new_data = compare_with_champion({**now, "data_md5_train": "00"}, now, [])
    assert new_data["changed"] is True and new_data["reasons"] == ["data_md5_train: 00 -> aa"]
    stale = compare_with_champion(now, now, ["prune", "quantize"])
    assert stale["reasons"] == ["dvc status: not up to date: prune, quantize"]
    first = compare_with_champion(None, now, [])
    assert first["changed"] is True and first["reasons"] == ["no champion yet"]
    old = compare_with_champion({"data_md5_train": "aa", "data_md5_eval": "bb"}, now, [])
    assert old["reasons"] == ["params_hash: not recorded -> cc"]  # a champion without the tag


def test_progress_is_written_only_where_the_flow_asks(tmp_path, monkeypatch):
    target = tmp_path / "progress.json"
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    report_progress("distill epoch 1/2", 1, 10)
    assert not target.exists()
    monkeypatch.setenv(PROGRESS_ENV, str(target))
    report_progress("distill epoch 2/2", 10, 10)  # the last step is always written
    assert read_progress(target) == {"label": "distill epoch 2/2", "done": 10, "total": 10}
    target.write_text(json.dumps({"label": "x", "done": 1, "total": 0}))
    assert read_progress(target) is None  # nonsense is ignored, not shown
    target.write_text("{half")
    assert read_progress(target) is None
