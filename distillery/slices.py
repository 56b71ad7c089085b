"""Slices: named subsets of the eval rows (`gate.slices`), and their figures.

A slice selects rows by gold label, by a column of the eval file, or by text length in
tokens ([min, max), counted with the teacher's tokenizer, special tokens excluded). A slice
that selects no eval row is an error naming it: a check on nothing would always pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillery.config import SliceConfig
from distillery.errors import DistilleryError
from distillery.stats import metric_value


class SliceError(DistilleryError, ValueError):
    """A slice definition that cannot be applied to the eval data; the message names it."""


def read_eval_column(path: str | Path, column: str) -> list:
    """One column of the eval file, row for row as validation read it (values as strings)."""
    from distillery.data import _DELIMITERS, _PARQUET, _open_bytes, _read_delimited, _read_parquet

    path = Path(path)
    suffix = path.suffix.lower()
    with _open_bytes(path) as fh:
        raw = fh.read()
    df = _read_parquet(path, raw, [column]) if suffix in _PARQUET else _read_delimited(path, raw, _DELIMITERS[suffix])
    if column not in df.columns:
        raise SliceError(f"{path}: column {column!r} not found; columns found: {list(map(str, df.columns))}")
    return df[column].tolist()


def select_rows(cfg: SliceConfig, key: str, labels: list[str], gold: np.ndarray,
                token_lengths: np.ndarray | None = None, column: list | None = None) -> np.ndarray:
    """Indices of the eval rows in slice `cfg` (`key` names it in errors, e.g. gate.slices[0])."""
    where = f"{key} ({cfg.name!r})"
    if cfg.label is not None:
        names = [str(x) for x in labels]
        unknown = [x for x in cfg.label if str(x) not in names]
        if unknown:
            raise SliceError(f"{where}: unknown label(s) {unknown}; the task's labels are {names}")
        mask = np.isin(np.asarray(gold), [names.index(str(x)) for x in cfg.label])
    elif cfg.column is not None:
        if column is None or len(column) != len(gold):
            raise SliceError(f"{where}: column {cfg.column!r} is not available row for row for the eval data")
        wanted = {str(v) for v in cfg.values}
        mask = np.array([str(v) in wanted for v in column], dtype=bool)
    else:
        lo, hi = cfg.tokens
        n = np.asarray(token_lengths)
        mask = (n >= (lo or 0)) & (n < (hi if hi is not None else np.inf))
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        raise SliceError(f"{where}: selects no eval rows; change or remove the slice")
    return rows


def token_lengths(tokenizer_source: str, texts: list[str]) -> np.ndarray:
    """Word pieces per text with the given tokenizer (a model directory), special tokens excluded."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    return np.array([len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]])


def all_slice_rows(slices: list[SliceConfig], labels: list[str], gold: np.ndarray, texts: list[str], *,
                   tokenizer_source: str | None, eval_path: str | Path | None) -> dict[str, list[int]]:
    """{slice name: eval row indices} for every slice; errors name the slice's key."""
    lengths = None
    if any(s.tokens is not None for s in slices):
        lengths = token_lengths(tokenizer_source, texts)
    columns: dict[str, list] = {}
    out = {}
    for i, s in enumerate(slices):
        col = None
        if s.column is not None:
            try:
                col = columns.setdefault(s.column, read_eval_column(eval_path, s.column))
            except SliceError as exc:
                raise SliceError(f"gate.slices[{i}] ({s.name!r}): {exc}") from None
        out[s.name] = select_rows(s, f"gate.slices[{i}]", labels, gold, lengths, col).tolist()
    return out


def slice_figures(rows: dict[str, list[int]], pred: np.ndarray, gold: np.ndarray, n_classes: int) -> dict:
    """{slice: {rows, accuracy, macro_f1}} for one model's predictions."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    return {name: {"rows": len(idx), "accuracy": metric_value(pred[idx], gold[idx], "accuracy", n_classes),
                   "macro_f1": metric_value(pred[idx], gold[idx], "macro_f1", n_classes)}
            for name, idx in rows.items()}
