"""What a served model accepts: the same rules as the training data, checked per request.

Training refuses null, blank and non-text rows (distillery/validation.py); a served model that
scored them would answer confidently about nothing (a null became the text "None"). So every
request is checked before it is tokenised, and refused as a whole with one message naming the
rows and columns at fault:

- texts are strings: no null / NaN, no bool, number, list or dict, no empty or whitespace-only text;
- the columns are the model's input columns (`input_columns` in the model directory's
  distillery.json, default ["text"]), or exactly as many unnamed columns (a plain list of
  strings, `{"inputs": [...]}`, a `dataframe_split` without `columns`);
- at most `max_rows` rows per request.

Pure: pandas and numpy only (the pyfunc, tasks/pyfunc_model.py, turns InputError into
MLflow's INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_COLUMNS = ("text",)
META_FILE = "distillery.json"
MAX_PROBLEMS = 5  # problems quoted in one message; the rest are counted
MAX_ROWS_KEY = "max_rows_per_request"  # the pyfunc's model_config key (register.max_rows_per_request)


class InputError(ValueError):
    """A request the model must not score; the message says which rows and columns, and why."""


def input_columns(model_dir: str | Path) -> tuple[str, ...]:
    """The model's input column names, from its distillery.json (`input_columns`), else ("text",)."""
    path = Path(model_dir) / META_FILE
    meta = json.loads(path.read_text()) if path.exists() else {}
    columns = meta.get("input_columns") or list(DEFAULT_COLUMNS)
    if not (isinstance(columns, list) and all(isinstance(c, str) and c for c in columns)):
        raise ValueError(f"{path}: input_columns must be a list of column names, got {columns!r}")
    return tuple(columns)


def _unnamed(name: Any) -> bool:
    # pandas names columns 0, 1, ... when the caller gave none
    return isinstance(name, (int, np.integer)) and not isinstance(name, bool)


def _columns_of(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[list[Any]]:
    """The expected columns' values, in the model's order; unnamed columns map by position."""
    names = list(frame.columns)
    if names and all(_unnamed(n) for n in names):
        if len(names) != len(columns):
            raise InputError(f"input has {len(names)} unnamed columns; the model takes {len(columns)} "
                             f"({', '.join(columns)}): send {'one' if len(columns) == 1 else len(columns)} "
                             "or name them")
        return [frame.iloc[:, i].tolist() for i in range(len(columns))]
    missing = [c for c in columns if c not in names]
    extra = [str(n) for n in names if n not in columns]
    if missing or extra:
        raise InputError(f"input columns {[str(n) for n in names]}: expected {list(columns)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    return [frame[c].tolist() for c in columns]


def _as_columns(model_input: Any, columns: tuple[str, ...]) -> list[list[Any]]:
    """Every input form MLflow's scoring server and pyfunc.predict hand over, as columns of values."""
    if isinstance(model_input, pd.DataFrame):
        return _columns_of(model_input, columns)
    if isinstance(model_input, pd.Series):
        return _columns_of(model_input.to_frame(name=0 if model_input.name is None else model_input.name), columns)
    if isinstance(model_input, dict):  # {"inputs": {"text": [...]}}
        try:
            frame = pd.DataFrame({k: list(np.atleast_1d(v)) for k, v in model_input.items()})
        except ValueError as exc:
            raise InputError(f"input columns of different lengths: {exc}") from None
        return _columns_of(frame, columns)
    if isinstance(model_input, str):
        model_input = [model_input]
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 0:
            model_input = [model_input.item()]
        elif model_input.ndim == 2:  # rows x unnamed columns
            return _columns_of(pd.DataFrame(model_input), columns)
        elif model_input.ndim == 1:
            model_input = model_input.tolist()
        else:
            raise InputError(f"input is a {model_input.ndim}-dimensional array; expected a list of texts")
    if not isinstance(model_input, (list, tuple)):
        raise InputError(f"input is a {type(model_input).__name__}; expected a list of texts or a table "
                         f"with column(s) {list(columns)}")
    rows = list(model_input)
    if rows and all(isinstance(r, dict) for r in rows):  # records: [{"text": ...}, ...]
        return _columns_of(pd.DataFrame(rows), columns)
    if len(columns) == 1:
        return [rows]
    if not all(isinstance(r, (list, tuple)) and len(r) == len(columns) for r in rows):
        raise InputError(f"each row must hold {len(columns)} texts ({', '.join(columns)})")
    return [[r[i] for r in rows] for i in range(len(columns))]


def _scalar(value: Any) -> Any:
    # records parsed by MLflow's server hold 0-d numpy arrays ({"text": array('hi')})
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _problem(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "null"
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__} {str(value)[:40]!r}"
    if not value.strip():
        return "empty text" if not value else "whitespace-only text"
    return None


def parse_texts(model_input: Any, columns: tuple[str, ...] = DEFAULT_COLUMNS,
                max_rows: int | None = None) -> list[str] | list[tuple[str, ...]]:
    """The request's texts (one string per row, or a tuple per row for several input columns).

    Raises InputError, refusing the whole request, for any row that training would refuse.
    """
    values = [[_scalar(v) for v in column] for column in _as_columns(model_input, tuple(columns))]
    n = len(values[0]) if values else 0
    if n == 0:
        raise InputError("input has no rows")
    if max_rows is not None and n > max_rows:
        raise InputError(f"input has {n} rows; at most {max_rows} per request (register.max_rows_per_request)")
    problems = [f"row {i}" + (f", column {name!r}" if len(columns) > 1 else "") + f": {p}"
                for name, column in zip(columns, values)
                for i, v in enumerate(column) if (p := _problem(v)) is not None]
    if problems:
        more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
        raise InputError(f"{'; '.join(problems[:MAX_PROBLEMS])}{more}")
    if len(columns) == 1:
        return [str(v) for v in values[0]]
    return list(zip(*([str(v) for v in column] for column in values)))
