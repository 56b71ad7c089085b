"""`distillery run` prints a user error once: Prefect's console copies of it are dropped or cut."""

import logging
import sys

from flows.prefect_api import _UserErrorsOnce
from distillery.data import DataError


def record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, msg, (), exc_info)


def test_user_errors_are_printed_once():
    f = _UserErrorsOnce()
    assert "distillery.data" in sys.modules
    error = DataError("in/train.csv: file is empty")
    assert f.filter(record("Task run failed with exception: %r", error)) is False  # the traceback copy
    state = record('Finished in state Failed("Task run encountered an exception DataError: in/train.csv: x\\n'
                   '  - row 3: ...")')
    assert f.filter(state) is True
    assert state.getMessage() == 'Finished in state Failed("Task run encountered an exception DataError: in/train.csv: x ...'
    bug = record("Task run failed with exception: %r", KeyError("model"))
    assert f.filter(bug) is True and bug.exc_info is not None  # a real bug keeps its traceback
    plain = record("validate: ran")
    assert f.filter(plain) is True and plain.getMessage() == "validate: ran"


def test_new_task_needs_a_reason(tmp_path, capsys):
    from distillery_cli.cli import main

    assert main(["--project-dir", str(tmp_path), "run", "--new-task"]) == 2
    err = capsys.readouterr().err
    assert "--new-task needs --reason" in err and "Traceback" not in err
