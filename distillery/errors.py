"""The one base class of the errors that are the user's input, not a bug.

A bad params file, bad data, a held lock, an unreachable registry: the CLI prints such an
error as one line (`distillery: error: ...`, exit 1, or 2 for a `ConfigError`) with no
traceback, and the flow reports a stage's once. Every module raises its own subclass
(`ConfigError`, `DataError`, `PromotionError`, ...), which also keeps the built-in base it
had (ValueError, RuntimeError), so `except ValueError` around a call still works.
"""

from __future__ import annotations


class DistilleryError(Exception):
    """An error whose message is meant for the user: printed once, without a traceback."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """What the CLI and the flow's console treat as the user's input: ours, and a missing file."""
    return (DistilleryError, FileNotFoundError)


def user_error_names() -> set[str]:
    """The class names of every `DistilleryError` defined so far (Prefect's log lines name them)."""
    names, todo = set(), [DistilleryError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names
