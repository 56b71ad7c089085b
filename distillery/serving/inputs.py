"""Request bodies in the formats of `mlflow models serve` -> rows of input columns.

Accepted (as MLflow's scoring server documents them, for a model with string columns):

    {"dataframe_split": {"columns": ["text"], "data": [["good"], ["bad"]]}}
    {"dataframe_records": [{"text": "good"}, {"text": "bad"}]}
    {"inputs": ["good", "bad"]}             one column: a list of strings
    {"inputs": {"text": ["good", "bad"]}}   columns as lists (also "instances", TF-serving style)
    {"inputs": [{"text": "good"}]}          records

Every problem is an InputError with an HTTP status and a message naming it; nothing here
raises anything else for a body a client sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_rows: int = 256
    max_text_chars: int = 20_000  # the tokenizer truncates; this bounds the work before it does


class InputError(ValueError):
    """A bad request: `status` is the HTTP code (400, 413, 415, 422), the message says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_json(body: bytes, limits: Limits) -> object:
    if len(body) > limits.max_body_bytes:
        raise InputError(413, f"request body is {len(body)} bytes, over the limit of {limits.max_body_bytes}")
    if not body.strip():
        raise InputError(400, "empty request body: send JSON with one of " + ", ".join(FORMATS))
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InputError(400, "request body is not UTF-8") from None
    except ValueError as exc:
        raise InputError(400, f"malformed JSON: {exc}") from None


def _check_columns(got: list, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in got]
    extra = [c for c in got if c not in columns]
    if missing or extra:
        parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"unexpected column(s) {extra}"] if extra else [])
        raise InputError(422, f"{where}: {'; '.join(parts)}; the model takes {columns}")


def _records(records, columns: list[str], where: str) -> list[tuple]:
    if not isinstance(records, list):
        raise InputError(422, f"{where} must be a list of objects, got {type(records).__name__}")
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(422, f"{where}[{i}] must be an object with keys {columns}, got {type(rec).__name__}")
        _check_columns(list(rec), columns, f"{where}[{i}]")
        rows.append(tuple(rec[c] for c in columns))
    return rows


def _split(split, columns: list[str]) -> list[tuple]:
    if not isinstance(split, dict):
        raise InputError(422, "dataframe_split must be an object with 'columns' and 'data'")
    unknown = set(split) - {"columns", "data", "index"}
    if unknown:
        raise InputError(422, f"dataframe_split: unexpected key(s) {sorted(unknown)}")
    got, data = split.get("columns", columns), split.get("data")
    if not isinstance(got, list) or not isinstance(data, list):
        raise InputError(422, "dataframe_split needs 'columns' (a list of names) and 'data' (a list of rows)")
    _check_columns(got, columns, "dataframe_split")
    if len(set(got)) != len(got):
        raise InputError(422, f"dataframe_split: duplicate column names in {got}")
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(got):
            raise InputError(422, f"dataframe_split.data[{i}] must be a list of {len(got)} value(s)")
        by_name = dict(zip(got, row))
        rows.append(tuple(by_name[c] for c in columns))
    return rows


def _tensor(inputs, columns: list[str], where: str) -> list[tuple]:
    if isinstance(inputs, dict):
        _check_columns(list(inputs), columns, where)
        lists = [inputs[c] for c in columns]
        if not all(isinstance(v, list) for v in lists):
            raise InputError(422, f"{where}: each column must be a list of values")
        if len({len(v) for v in lists}) > 1:
            raise InputError(422, f"{where}: columns have different lengths {[len(v) for v in lists]}")
        return list(zip(*lists))
    if isinstance(inputs, list) and inputs and all(isinstance(x, dict) for x in inputs):
        return _records(inputs, columns, where)
    if isinstance(inputs, list):
        if len(columns) == 1:
            return [(x,) for x in inputs]
        # several columns: each item one row, a list of len(columns) values (checked in parse_rows)
        return [tuple(x) if isinstance(x, list) else (x,) for x in inputs]
    if isinstance(inputs, str) and len(columns) == 1:
        return [(inputs,)]
    raise InputError(422, f"{where} must be a list of strings or an object of columns {columns}")


def parse_rows(payload: object, columns: list[str], limits: Limits) -> list[tuple[str, ...]]:
    """Rows of `columns` (each a tuple of strings) from a decoded JSON body."""
    if not isinstance(payload, dict):
        raise InputError(400, f"the JSON body must be an object with one of the keys {list(FORMATS)}, "
                              f"got {type(payload).__name__}")
    keys = [k for k in payload if k in FORMATS]
    other = [k for k in payload if k not in FORMATS and k != "params"]
    if len(keys) != 1 or other:
        raise InputError(400, f"the JSON body must have exactly one of the keys {list(FORMATS)}, got {sorted(payload)}")
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        rows = _split(value, columns)
    elif key == "dataframe_records":
        rows = _records(value, columns, key)
    else:
        rows = _tensor(value, columns, key)
    if not rows:
        raise InputError(422, f"{key}: empty batch: send at least one row")
    if len(rows) > limits.max_rows:
        raise InputError(413, f"{key}: {len(rows)} rows, over the limit of {limits.max_rows} per request")
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise InputError(422, f"{key}: row {i} has {len(row)} value(s), the model takes {columns}")
        for col, value in zip(columns, row):
            if not isinstance(value, str):
                shown = "null" if value is None else type(value).__name__
                raise InputError(422, f"{key}: row {i}, column {col!r}: expected a string, got {shown}")
            if len(value) > limits.max_text_chars:
                raise InputError(413, f"{key}: row {i}, column {col!r}: {len(value)} characters, over the "
                                      f"limit of {limits.max_text_chars}")
    return rows
