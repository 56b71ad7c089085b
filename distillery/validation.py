"""The data gate: a Great Expectations (GX Core 1.x) suite built from `params.yaml`.

Bad data must stop the pipeline before any training, with a message a person
can act on: which file, which split, which check, how many rows, and the first
failing rows by number. GX runs the checks and its own result is kept verbatim
in the report (`gx_result`); the readable summary is ours.

GX is imported lazily (about 3-5 s) so the rest of the package stays cheap to import.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from distillery.config import DataConfig, ValidateConfig
from distillery.data import LABEL, TEXT

# Column derived for the class-balance check: each row carries its class's share
# of the labelled rows (0 for unlabelled rows: they belong to no class).
SHARE = "label_share"

# Short human names of the checks; they travel in each expectation's `meta`.
REQUIRED_COLUMN = "required column present"
TEXT_NOT_NULL = "text not null"
TEXT_NOT_BLANK = "text not empty or whitespace-only"
TEXT_LENGTH = "text length within bounds"
LABEL_NOT_NULL = "label not null"
LABEL_IN_SET = "labels in declared set"
ROW_COUNT = "row count within bounds"
CLASS_BALANCE = "no class above max share"

_TEXT_SHOWN = 80


def _gx():
    """Import GX with its analytics off (runs are offline); before the import, it reads env once."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


@dataclass
class Failure:
    """One failed expectation, in terms of the user's file and columns."""

    expectation: str
    column: str | None
    details: str
    unexpected_count: int | None = None
    sample_rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "column": self.column, "details": self.details,
                "unexpected_count": self.unexpected_count, "sample_rows": self.sample_rows}


@dataclass
class SplitValidation:
    """The verdict on one split (file): success, our failures, and GX's own result."""

    split: str
    file: str
    rows: int
    success: bool
    failures: list[Failure]
    gx_result: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "file": self.file, "rows": self.rows, "success": self.success,
                "failures": [f.to_dict() for f in self.failures], "gx_result": self.gx_result}


class ValidationFailed(Exception):
    """Raised by the validate stage when any split fails; str() is the readable report."""

    def __init__(self, results: list[SplitValidation]):
        super().__init__(format_failures(results))
        self.results = results

    def __str__(self) -> str:
        return format_failures(self.results)


def build_expectations(data_cfg: DataConfig, validate_cfg: ValidateConfig,
                       label_names: list[str | int] | None) -> list:
    """The suite, from params, for the frame `gx_frame` derives (`text`, `label` as text,
    `label_share`); `meta` keeps the check's name and the user's own column name for messages."""
    gx = _gx()
    E = gx.expectations
    tcol, lcol = data_cfg.text_column, data_cfg.label_column

    def meta(check: str, column: str | None) -> dict:
        return {"check": check, "column": column}

    exps = [
        E.ExpectColumnToExist(column=TEXT, meta=meta(REQUIRED_COLUMN, tcol)),
        E.ExpectColumnToExist(column=LABEL, meta=meta(REQUIRED_COLUMN, lcol)),
        E.ExpectTableRowCountToBeBetween(min_value=validate_cfg.min_rows, max_value=validate_cfg.max_rows,
                                         meta=meta(ROW_COUNT, None)),
        E.ExpectColumnValuesToNotBeNull(column=TEXT, meta=meta(TEXT_NOT_NULL, tcol)),
        # Python's \s is Unicode-aware, so non-breaking spaces count as blank too.
        E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=r"^\s*$", meta=meta(TEXT_NOT_BLANK, tcol)),
        E.ExpectColumnValueLengthsToBeBetween(column=TEXT, min_value=validate_cfg.min_text_chars,
                                              max_value=validate_cfg.max_text_chars,
                                              meta=meta(TEXT_LENGTH, tcol)),
        E.ExpectColumnValuesToNotBeNull(column=LABEL, meta=meta(LABEL_NOT_NULL, lcol)),
        # GX 1.x has no "largest value share at most x" expectation (MostCommonValueToBeInSet
        # checks which value, KLDivergence needs a reference distribution, ProportionOfUnique
        # counts distinct values). So the per-class share is computed in pandas as a derived
        # column and GX checks its maximum: the observed value in GX's result is the real
        # share of the largest class, and the check stays inside the suite and its report.
        E.ExpectColumnMaxToBeBetween(column=SHARE, max_value=validate_cfg.max_class_share,
                                     meta=meta(CLASS_BALANCE, lcol)),
    ]
    if label_names is not None:
        # Labels are compared as text (`gx_frame` stringifies them): 1 in data matches "1" in params.
        exps.append(E.ExpectColumnValuesToBeInSet(column=LABEL, value_set=[str(x) for x in label_names],
                                                  meta=meta(LABEL_IN_SET, lcol)))
    return exps


def gx_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The frame GX sees: positional index (row i+1 of the file), labels as text, class shares."""
    out = df.reset_index(drop=True).copy()
    if LABEL in out.columns:
        raw = out[LABEL]
        null = raw.isna()
        labels = pd.Series([None if n else str(v) for v, n in zip(raw, null)], dtype=object)
        out[LABEL] = labels
        shares = labels[~null].value_counts(normalize=True)
        out[SHARE] = labels.map(shares).astype(float).fillna(0.0)
    return out


def validate_frame(df: pd.DataFrame, split_name: str, file_path: str, data_cfg: DataConfig,
                   validate_cfg: ValidateConfig, label_names: list[str | int] | None) -> SplitValidation:
    """Run the suite on one split in an ephemeral GX context and explain what failed."""
    gx = _gx()
    frame = gx_frame(df)
    context = _ephemeral_context(gx)
    batch = (context.data_sources.add_pandas("distillery").add_dataframe_asset(split_name)
             .add_batch_definition_whole_dataframe("all_rows"))
    suite = context.suites.add(gx.ExpectationSuite(
        name=f"distillery_{split_name}", expectations=build_expectations(data_cfg, validate_cfg, label_names)))
    definition = gx.ValidationDefinition(name=f"validate_{split_name}", data=batch, suite=suite)
    # SUMMARY keeps only the first few failing values and their index (a row number here);
    # COMPLETE would copy every failing value, which on a large bad file is the whole file.
    result = definition.run(batch_parameters={"dataframe": frame}, result_format={
        "result_format": "SUMMARY", "partial_unexpected_count": max(1, validate_cfg.sample_rows)})

    missing = {c for c in (TEXT, LABEL) if c not in frame.columns}
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        gx_column = cfg.kwargs.get("column")
        check = cfg.meta.get("check", cfg.type)
        if check != REQUIRED_COLUMN and (gx_column in missing or (gx_column == SHARE and LABEL in missing)):
            continue  # a consequence of the missing column, already reported once
        failures.append(_failure(r, check, cfg.meta.get("column"), df, frame, validate_cfg))
    order = {c: i for i, c in enumerate((REQUIRED_COLUMN, ROW_COUNT, TEXT_NOT_NULL, TEXT_NOT_BLANK,
                                         TEXT_LENGTH, LABEL_NOT_NULL, LABEL_IN_SET, CLASS_BALANCE))}
    failures.sort(key=lambda f: order.get(f.expectation, len(order)))  # GX returns results unordered
    return SplitValidation(split=split_name, file=str(file_path), rows=len(frame), success=not failures,
                           failures=failures, gx_result=_json_safe(result.describe_dict()))


def _ephemeral_context(gx):
    """An in-memory context: no progress bars (they garble stage logs), analytics off, and no
    temporary data-docs site (the default ephemeral config sets one up that we never build)."""
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False))
    return gx.get_context(project_config=config, mode="ephemeral")


def _failure(r, check: str, column: str | None, df: pd.DataFrame, frame: pd.DataFrame,
             cfg: ValidateConfig) -> Failure:
    res = r.result or {}
    error = _exception_message(r.exception_info)
    if error:
        return Failure(check, column, f"GX could not evaluate it: {error}")
    if check == REQUIRED_COLUMN:
        return Failure(check, column, f"column {column!r} not found; columns found: {list(map(str, df.columns))}")
    if check == ROW_COUNT:
        kw = r.expectation_config.kwargs
        return Failure(check, None, f"{res.get('observed_value')} rows; expected between "
                       f"{kw.get('min_value')} and {kw.get('max_value')}")
    if check == CLASS_BALANCE:
        labels = frame[LABEL].dropna()
        top = labels.value_counts()
        name, count = (top.index[0], int(top.iloc[0])) if len(top) else (None, 0)
        return Failure(check, column, f"class {name!r} holds {count} of {len(labels)} labelled rows "
                       f"({res.get('observed_value', 0):.1%}); at most "
                       f"{r.expectation_config.kwargs.get('max_value'):.1%} allowed", count)
    count = int(res.get("unexpected_count") or 0)
    details = f"{count} of {res.get('element_count', len(frame))} rows"
    if check == LABEL_IN_SET:
        values = ", ".join(f"{d['value']!r} ({d['count']}x)" for d in res.get("partial_unexpected_counts", []))
        allowed = r.expectation_config.kwargs.get("value_set")
        details += f"; unexpected labels include {values}; declared: {list(allowed)}"
    elif check == TEXT_LENGTH:
        kw = r.expectation_config.kwargs
        details += f" outside {kw.get('min_value')}..{kw.get('max_value')} characters"
    rows = res.get("partial_unexpected_index_list") or []
    return Failure(check, column, details, count, [_sample(df, int(i)) for i in rows[:cfg.sample_rows]])


def _sample(df: pd.DataFrame, i: int) -> dict:
    """Row i (0-based position) as the user wrote it: 1-based row number, shortened text, raw label."""
    text = df[TEXT].iloc[i] if TEXT in df.columns else None
    label = df[LABEL].iloc[i] if LABEL in df.columns else None
    if isinstance(text, str) and len(text) > _TEXT_SHOWN:
        text = text[:_TEXT_SHOWN - 3] + "..."
    return {"row": i + 1, "text": _json_safe(text), "label": _json_safe(label)}


def _exception_message(info: Any) -> str | None:
    """GX reports either {raised_exception, exception_message} or one such dict per metric."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    for sub in info.values():
        if isinstance(sub, dict) and sub.get("exception_message"):
            return str(sub["exception_message"]).splitlines()[0]
    return None


def _json_safe(obj: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, so reports are strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def format_failures(results: list[SplitValidation]) -> str:
    """A readable report of every failed check: file, split, check, column, count, sample rows."""
    failed = [r for r in results if not r.success]
    if not failed:
        return f"data validation passed ({len(results)} split(s))"
    n = sum(len(r.failures) for r in failed)
    lines = [f"data validation failed: {n} check(s) in {len(failed)} of {len(results)} split(s)"]
    for r in failed:
        lines.append(f"{r.file} (split {r.split!r}, {r.rows} rows):")
        for f in r.failures:
            where = f" [column {f.column!r}]" if f.column else ""
            lines.append(f"  - {f.expectation}{where}: {f.details}")
            for s in f.sample_rows:
                lines.append(f"      row {s['row']}: label={s['label']!r} text={s['text']!r}")
    return "\n".join(lines)
