"""The data gate: a Great Expectations (GX Core 1.x) suite built from `params.yaml`.

Bad data must stop the pipeline before any training, with a message a person
can act on: which file, which split, which check, how many rows, and the first
failing rows by number. GX runs every check, on train and on eval; its own
result is kept verbatim, as GX Data Docs (HTML) and in the report (`gx_result`);
the readable summary is ours.

Checks that look beyond one column work through columns derived in pandas
(`gx_frame`): each row's class share and class size, and for eval whether its
text is also in train; GX then checks those columns like any other, so every
check sits in one suite, one result and one HTML report. Checks with
`severity="warning"` are reported but do not stop the pipeline.

GX is imported lazily (about 3-5 s) so the rest of the package stays cheap to import.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distillery.config import DataConfig, ValidateConfig
from distillery.data import LABEL, TEXT, TEXT_PAIR
from distillery.errors import DistilleryError

# Columns derived for checks beyond one column (see `gx_frame`).
SHARE = "label_share"        # the row's class's share of the labelled rows (0 when unlabelled)
CLASS_ROWS = "class_rows"    # the number of rows of the row's class
IN_TRAIN = "text_in_train"   # eval only: the row's exact text is also a train text
CHARS = "text_chars"         # characters in the row's text (checked here rather than GX's value
                             # lengths, so its failing values are lengths, not 1 MB texts)
PAIR_CHARS = "text_pair_chars"  # the same for the second text of a pair
ROW_KEY = "row_text"         # what leakage and duplicates compare: the text, or the pair as one value
REPEATED = "text_repeated"   # the row's key occurs more than once in its split (null: no key)

# Short human names of the checks; they travel in each expectation's `meta`.
READABLE = "file readable"
REQUIRED_COLUMN = "required column present"
ROW_COUNT = "row count within bounds"
TEXT_NOT_NULL = "text not null"
TEXT_NOT_BLANK = "text not empty or whitespace-only"
TEXT_LENGTH = "text length within bounds"
LABEL_NOT_NULL = "label not null"
LABEL_IN_SET = "labels in declared set"
CLASSES_PRESENT = "every class present"
CLASS_BALANCE = "no class above max share"
CLASS_ROWS_MIN = "enough rows per class"
LEAKAGE = "no train/eval leakage"
DUPLICATES = "few duplicate texts"
LABEL_MAP = "label map agrees with the teacher"
ORDER = (READABLE, REQUIRED_COLUMN, ROW_COUNT, TEXT_NOT_NULL, TEXT_NOT_BLANK, TEXT_LENGTH, LABEL_NOT_NULL,
         LABEL_IN_SET, CLASSES_PRESENT, LABEL_MAP, CLASS_BALANCE, CLASS_ROWS_MIN, LEAKAGE, DUPLICATES)

FAILURE, WARNING = "failure", "warning"
DATA_DOCS_SITE = "distillery"
_TEXT_SHOWN = 80
_GX_STRING_KEPT = 200  # failing values longer than this are shortened in the JSON report


def _gx():
    """Import GX with its analytics off (runs are offline); before the import, it reads env once."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    return gx


@dataclass
class Failure:
    """One failed check, in terms of the user's file and columns."""

    expectation: str
    column: str | None
    details: str
    unexpected_count: int | None = None
    sample_rows: list[dict] = field(default_factory=list)
    severity: str = FAILURE

    def to_dict(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "column": self.column, "details": self.details,
                "unexpected_count": self.unexpected_count, "sample_rows": self.sample_rows,
                "severity": self.severity}


@dataclass
class SplitValidation:
    """The verdict on one split (file): its failures and warnings, and GX's own result."""

    split: str
    file: str
    rows: int | None
    success: bool
    failures: list[Failure]
    gx_result: dict = field(default_factory=dict)
    warnings: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "file": self.file, "rows": self.rows, "success": self.success,
                "failures": [f.to_dict() for f in self.failures],
                "warnings": [w.to_dict() for w in self.warnings], "gx_result": self.gx_result}


class ValidationFailed(DistilleryError):
    """Raised by the validate stage when any split fails; str() is the readable report."""

    def __init__(self, results: list[SplitValidation]):
        super().__init__(format_failures(results))
        self.results = results

    def __str__(self) -> str:
        return format_failures(self.results)


# --------------------------------------------------------------------------- the suite


def build_expectations(data_cfg: DataConfig, validate_cfg: ValidateConfig,
                       label_names: list[str | int] | None, *, with_leakage: bool = False) -> list:
    """The suite, from params, for the frame `gx_frame` derives. `meta` keeps the check's name and
    the user's own column name for messages; `description` is what the Data Docs show."""
    gx = _gx()
    E = gx.expectations
    s = validate_cfg.suite
    tcol, lcol = data_cfg.text_column, data_cfg.label_column

    def kw(check: str, column: str | None, description: str, severity: str = "critical") -> dict:
        # `$` starts a template variable in GX's renderer: keep it out of descriptions.
        return {"meta": {"check": check, "column": column}, "severity": severity,
                "description": f"{check}: {description}".replace("$", "")}

    exps = [
        E.ExpectColumnToExist(column=TEXT, **kw(REQUIRED_COLUMN, tcol, f"the text column {tcol!r} exists")),
        E.ExpectColumnToExist(column=LABEL, **kw(REQUIRED_COLUMN, lcol, f"the label column {lcol!r} exists")),
        E.ExpectColumnValuesToNotBeNull(column=TEXT, **kw(TEXT_NOT_NULL, tcol, f"no row has an empty {tcol!r} cell")),
        # Python's \s is Unicode-aware, so non-breaking spaces count as blank too.
        E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=r"^\s*$", **kw(
            TEXT_NOT_BLANK, tcol, f"no {tcol!r} is only whitespace")),
        E.ExpectColumnValuesToNotBeNull(column=LABEL, **kw(LABEL_NOT_NULL, lcol, f"every row has a {lcol!r}")),
    ]
    pcol = data_cfg.text_pair_column
    if pcol is not None:  # the second text of a pair: the same checks as the first
        exps += [
            E.ExpectColumnToExist(column=TEXT_PAIR, **kw(REQUIRED_COLUMN, pcol, f"the text pair column {pcol!r} exists")),
            E.ExpectColumnValuesToNotBeNull(column=TEXT_PAIR, **kw(TEXT_NOT_NULL, pcol, f"no row has an empty {pcol!r} cell")),
            E.ExpectColumnValuesToNotMatchRegex(column=TEXT_PAIR, regex=r"^\s*$", **kw(
                TEXT_NOT_BLANK, pcol, f"no {pcol!r} is only whitespace")),
        ]
    if s.row_count is not None:
        exps.append(E.ExpectTableRowCountToBeBetween(
            min_value=s.row_count.min, max_value=s.row_count.max,
            **kw(ROW_COUNT, None, f"between {s.row_count.min} and {s.row_count.max} rows")))
    if s.text_length is not None:
        exps.append(E.ExpectColumnValuesToBeBetween(
            column=CHARS, min_value=s.text_length.min, max_value=s.text_length.max,
            **kw(TEXT_LENGTH, tcol, f"every {tcol!r} has {s.text_length.min} to {s.text_length.max} characters")))
        if pcol is not None:
            exps.append(E.ExpectColumnValuesToBeBetween(
                column=PAIR_CHARS, min_value=s.text_length.min, max_value=s.text_length.max,
                **kw(TEXT_LENGTH, pcol, f"every {pcol!r} has {s.text_length.min} to {s.text_length.max} characters")))
    if label_names is not None:
        names = [str(x) for x in label_names]
        # Labels are compared as text (`gx_frame` stringifies them): 1 in data matches "1" in params.
        exps.append(E.ExpectColumnValuesToBeInSet(column=LABEL, value_set=names, **kw(
            LABEL_IN_SET, lcol, f"every {lcol!r} is one of {names}")))
        # (ExpectColumnDistinctValuesToEqualSet / ToBeInSet would say the same, but GX 1.24's Data
        # Docs renderer fails on their results; ContainSet plus the row-level InSet above is exact.)
        exps.append(E.ExpectColumnDistinctValuesToContainSet(column=LABEL, value_set=names, **kw(
            CLASSES_PRESENT, lcol, f"each of {names} occurs at least once (train and eval hold the same classes)")))
    if s.max_class_share is not None:
        # GX 1.x has no "largest value share at most x" expectation (MostCommonValueToBeInSet
        # checks which value, KLDivergence needs a reference distribution), so the share is a
        # derived column and GX checks its maximum: the observed value is the real largest share.
        exps.append(E.ExpectColumnMaxToBeBetween(column=SHARE, max_value=s.max_class_share, **kw(
            CLASS_BALANCE, lcol, f"no class holds more than {s.max_class_share:.0%} of the rows")))
    if s.min_class_rows is not None:
        exps.append(E.ExpectColumnValuesToBeBetween(column=CLASS_ROWS, min_value=s.min_class_rows, **kw(
            CLASS_ROWS_MIN, lcol, f"every class has at least {s.min_class_rows} rows")))
    what = "text" if pcol is None else "text pair"
    if with_leakage and s.max_leakage_share is not None:
        exps.append(E.ExpectColumnValuesToBeInSet(
            column=IN_TRAIN, value_set=[False], mostly=1.0 - s.max_leakage_share, **kw(
                LEAKAGE, tcol, f"at most {s.max_leakage_share:.1%} of the eval rows have a {what} that is also in train")))
    if s.max_duplicate_share is not None:
        # Uniqueness over the whole split, batch by batch: REPEATED is derived from the split's
        # key hashes (`SplitSummary`), so each batch's rows are judged against every other row.
        exps.append(E.ExpectColumnValuesToBeInSet(
            column=REPEATED, value_set=[False], mostly=1.0 - s.max_duplicate_share, **kw(
                DUPLICATES, tcol, f"at most {s.max_duplicate_share:.1%} of the rows share their exact {what} "
                                  "with another row of the split", severity="warning")))
    return exps


def row_keys(df: pd.DataFrame) -> pd.Series:
    """What makes two rows "the same text": the text, or for pairs the (text, text pair) tuple
    (a pair that repeats only its first text is a new example, not a leak)."""
    if TEXT_PAIR not in df.columns:
        return df[TEXT]
    return pd.Series([None if not (isinstance(a, str) and isinstance(b, str)) else f"{a}\u241f{b}"
                      for a, b in zip(df[TEXT], df[TEXT_PAIR])], index=df.index, dtype=object)


def key_hashes(keys: pd.Series) -> np.ndarray:
    """A 16-byte hash of each non-null row key (`row_keys`), as a structured array that sorts and
    compares whole: two 64-bit hashes under different keys, so a false match between distinct texts
    is out of reach (about n^2 / 2^129 for n rows)."""
    keys = keys[keys.notna()]
    out = np.empty(len(keys), _HASH)
    for field_name, salt in zip(_HASH.names, ("distillery-key-a", "distillery-key-b")):
        out[field_name] = pd.util.hash_pandas_object(keys, index=False, hash_key=salt).to_numpy() if len(keys) else []
    return out


_HASH = np.dtype([("a", "<u8"), ("b", "<u8")])


def _member(hashes: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `hashes` are in `sorted_set` (sorted, distinct)."""
    if not len(sorted_set) or not len(hashes):
        return np.zeros(len(hashes), bool)
    pos = np.minimum(np.searchsorted(sorted_set, hashes), len(sorted_set) - 1)
    return sorted_set[pos] == hashes


@dataclass
class SplitSummary:
    """What the checks that look across rows need of a whole split, gathered batch by batch
    (`add`, then `finish`): the row count, each label's count (as text) and the distinct label
    values (few), and a 16-byte hash per row key. That is all the validate stage holds of a split
    beside one batch: 16 bytes a row, against a row's whole text; the sorted distinct hashes
    (`keys`) answer leakage and the repeated ones (`repeated`) duplicates."""

    rows: int = 0
    label_counts: dict = field(default_factory=dict)  # str(label) -> rows, in order of first appearance
    labels_seen: dict = field(default_factory=dict)   # the labels as read (normalised), first appearance
    keys: np.ndarray | None = None
    repeated: np.ndarray | None = None
    _hashes: list = field(default_factory=list)

    def add(self, df: pd.DataFrame) -> None:
        self.rows += len(df)
        if LABEL in df.columns:
            for v in df[LABEL]:
                if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                    continue
                self.labels_seen.setdefault(v, None)
                key = str(v)
                self.label_counts[key] = self.label_counts.get(key, 0) + 1
        if TEXT in df.columns:
            self._hashes.append(key_hashes(row_keys(df)))

    def finish(self) -> SplitSummary:
        if self._hashes:
            every = np.sort(np.concatenate(self._hashes))
            self._hashes = []
            self.keys = np.unique(every)
            self.repeated = np.unique(every[1:][every[1:] == every[:-1]])
        return self

    def counts(self) -> pd.Series:
        """Rows per class (as text), most frequent first, as `value_counts` orders them."""
        return pd.Series(self.label_counts, dtype="int64").sort_values(ascending=False)


def summarise(frames) -> SplitSummary:
    summary = SplitSummary()
    for df in frames:
        summary.add(df)
    return summary.finish()


def gx_frame(df: pd.DataFrame, train_keys: np.ndarray | None = None,
             label_names: list[str | int] | None = None, summary: SplitSummary | None = None) -> pd.DataFrame:
    """The frame GX sees: positional index (row i+1 of the batch), labels as text, and the
    derived columns, from the whole split's `summary` (default: of this frame alone): class share,
    class size, whether the row's key repeats in the split, and (given train's key hashes,
    `SplitSummary.keys`) whether it is in train.
    A label outside `label_names` is no class: it is reported once, as such, not as a tiny class."""
    out = df.reset_index(drop=True).copy()
    summary = summary if summary is not None else summarise([out])
    if LABEL in out.columns:
        raw = out[LABEL]
        null = raw.isna()
        labels = pd.Series([None if n else str(v) for v, n in zip(raw, null)], dtype=object)
        out[LABEL] = labels
        counts = summary.counts()
        out[SHARE] = labels.map(counts / max(1, int(counts.sum()))).astype(float).fillna(0.0)
        # Unlabelled rows belong to no class: they are reported once, as null labels.
        sizes = labels.map(counts).astype(float)
        if label_names is not None:
            sizes[~labels.isin([str(x) for x in label_names])] = np.nan
        out[CLASS_ROWS] = sizes
    if TEXT in out.columns:
        out[CHARS] = out[TEXT].map(lambda t: len(t) if isinstance(t, str) else None).astype(float)
    if TEXT_PAIR in out.columns:
        out[PAIR_CHARS] = out[TEXT_PAIR].map(lambda t: len(t) if isinstance(t, str) else None).astype(float)
    if TEXT in out.columns:
        keys = row_keys(out)
        if TEXT_PAIR in out.columns:
            out[ROW_KEY] = keys
        present = keys.notna().to_numpy()
        hashes = key_hashes(keys)
        repeated = np.full(len(out), None, dtype=object)
        repeated[present] = _member(hashes, summary.repeated if summary.repeated is not None else hashes[:0]).tolist()
        out[REPEATED] = repeated
        if train_keys is not None:
            in_train = np.zeros(len(out), bool)
            in_train[present] = _member(hashes, train_keys)
            out[IN_TRAIN] = in_train
    return out


# --------------------------------------------------------------------------- running it


class SuiteRunner:
    """One ephemeral GX context for a validation: each split is validated into it, and the
    Data Docs are built from all of them at the end."""

    def __init__(self, docs_dir: str | Path | None = None):
        self.gx = _gx()
        self.docs_dir = Path(docs_dir) if docs_dir is not None else None
        self.context = _ephemeral_context(self.gx, self.docs_dir)
        self.source = self.context.data_sources.add_pandas("distillery")

    def validate(self, df: pd.DataFrame, split: str, file: str, data_cfg: DataConfig,
                 validate_cfg: ValidateConfig, label_names: list[str | int] | None,
                 train_texts: pd.Series | None = None) -> SplitValidation:
        """Run the suite on one split held as one frame (`train_texts`: train's `row_keys`, for leakage)."""
        train_keys = summarise([pd.DataFrame({TEXT: train_texts})]).keys if train_texts is not None else None
        return self.validate_batches([df], split, file, data_cfg, validate_cfg, label_names,
                                     summarise([df]), train_keys)

    def validate_batches(self, batches, split: str, file: str, data_cfg: DataConfig,
                         validate_cfg: ValidateConfig, label_names: list[str | int] | None,
                         summary: SplitSummary, train_keys: np.ndarray | None = None) -> SplitValidation:
        """Run the suite on one split, batch by batch (`batches`: its frames in row order, e.g.
        `data.iter_source`; `summary`: of the whole split, for the checks across rows), in this
        runner's GX context, and explain what failed. Each batch is one GX validation; their results
        are combined into the split's (counts summed, first failing rows kept, row count and class
        checks over the whole split), which replaces the first batch's in the store, so the Data
        Docs show one validation per split, as GX would have run it on the whole split."""
        gx = self.gx
        batch_def = self.source.add_dataframe_asset(split).add_batch_definition_whole_dataframe("all_rows")
        suite = self.context.suites.add(gx.ExpectationSuite(
            name=f"distillery_{split}",
            expectations=build_expectations(data_cfg, validate_cfg, label_names,
                                            with_leakage=train_keys is not None)))
        definition = gx.ValidationDefinition(name=f"validate_{split}", data=batch_def, suite=suite)
        # SUMMARY keeps only the first few failing values and their index (a row number here);
        # COMPLETE would copy every failing value, which on a large bad file is the whole file.
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": max(1, validate_cfg.sample_rows)}
        store = self.context.validation_results_store
        result, merged, columns, offset, key = None, None, None, 0, None
        samples: list[list[dict]] = []
        for df in batches:
            frame = gx_frame(df, train_keys, label_names, summary)
            if result is None:
                known = set(store.list_keys())
                result = definition.run(batch_parameters={"dataframe": frame}, result_format=fmt)
                key = next(iter(set(store.list_keys()) - known), None)
                columns, part = list(df.columns), result
                merged = _Combined(result, fmt)
                samples = [[] for _ in result.results]
            else:
                from great_expectations.validator.v1_validator import Validator

                part = Validator(batch_definition=batch_def, batch_parameters={"dataframe": frame},
                                 result_format=fmt).validate_expectation_suite(suite)
                merged.add(part, offset)
            for taken, r in zip(samples, part.results):
                for i in (r.result or {}).get("partial_unexpected_index_list") or []:
                    if len(taken) < validate_cfg.sample_rows:
                        taken.append(_sample(df, int(i), offset))
            offset += len(df)
            del frame, part
            _forget_metrics(self.source)
        if merged.batches > 1:
            merged.finish()
            if key is not None:
                store.set(key, result)
        missing = {c for c in (TEXT, LABEL) + ((TEXT_PAIR,) if data_cfg.text_pair_column else ())
                   if c not in columns}
        counts = summary.counts()
        found = []
        for r, taken in zip(result.results, samples):
            if r.success:
                continue
            cfg = r.expectation_config
            gx_column = cfg.kwargs.get("column")
            check = cfg.meta.get("check", cfg.type)
            derived_from_missing = (gx_column in (SHARE, CLASS_ROWS) and LABEL in missing) or (
                gx_column in (CHARS, IN_TRAIN, ROW_KEY, REPEATED) and TEXT in missing) or (
                gx_column == PAIR_CHARS and TEXT_PAIR in missing)
            if check != REQUIRED_COLUMN and (gx_column in missing or derived_from_missing):
                continue  # a consequence of the missing column, already reported once
            failure = _failure(r, check, cfg.meta.get("column"), columns, counts, summary.rows, taken)
            failure.severity = WARNING if str(getattr(cfg.severity, "value", cfg.severity)) == "warning" else FAILURE
            found.append(failure)
        found.sort(key=lambda f: ORDER.index(f.expectation) if f.expectation in ORDER else len(ORDER))
        failures = [f for f in found if f.severity == FAILURE]
        return SplitValidation(split=split, file=str(file), rows=summary.rows, success=not failures,
                               failures=failures, warnings=[f for f in found if f.severity == WARNING],
                               gx_result=_json_safe(result.describe_dict(), _GX_STRING_KEPT))

    def build_docs(self) -> Path | None:
        """Write the GX Data Docs site (index.html, one page per split) to `docs_dir`."""
        if self.docs_dir is None:
            return None
        self.context.build_data_docs(site_names=[DATA_DOCS_SITE])
        # GX copies ~4 MB of images and fonts no page uses (the pages take their styles from CDNs
        # and fall back to plain HTML offline); keep only what the pages reference.
        static = self.docs_dir / "static"
        for p in sorted(static.rglob("*"), reverse=True) if static.is_dir() else []:
            if p.is_file() and p.name != "favicon.ico":
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        return self.docs_dir / "index.html"


def _forget_metrics(source) -> None:
    """Drop the metrics GX's execution engine cached for a batch: it keys them by batch and keeps
    them for the engine's life (whole columns of each batch among them), so over a split's batches
    they would grow with the data. GX has no public switch for the cache of a fluent data source's
    engine."""
    cache = getattr(source.get_execution_engine(), "_metric_cache", None)
    if hasattr(cache, "clear"):
        cache.clear()


def _ephemeral_context(gx, docs_dir: Path | None):
    """An in-memory context: no progress bars (they garble stage logs), analytics off, and a Data
    Docs site only where asked for (the default ephemeral config makes a temporary one)."""
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    sites = {}
    if docs_dir is not None:
        sites[DATA_DOCS_SITE] = {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False, data_docs_sites=sites,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False))
    return gx.get_context(project_config=config, mode="ephemeral")


class _Combined:
    """The GX results of a split's batches, combined into the first batch's result object: what GX
    would have found on the whole split. Map checks (per row) sum their counts and keep the first
    failing values and rows (batch offsets added), and GX's own `_format_map_output` rebuilds their
    result; the row count is summed, the column maximum (class share: already the whole split's) is
    the largest, a class is missing when no batch has it. A check GX could not evaluate on some
    batch keeps that batch's error."""

    def __init__(self, first, fmt: dict):
        self.first, self.fmt, self.batches = first, fmt, 1
        self.state = [self._start(r) for r in first.results]

    @staticmethod
    def _start(r) -> dict:
        res = r.result or {}
        return {"error": r if _exception_message(r.exception_info) else None,
                "element_count": res.get("element_count", 0), "unexpected_count": res.get("unexpected_count") or 0,
                "missing_count": res.get("missing_count") or 0,
                "values": list(res.get("partial_unexpected_list") or []),
                "index": list(res.get("partial_unexpected_index_list") or []),
                "observed": res.get("observed_value"), "missing_list": res.get("partial_missing_list"),
                "success": r.success}

    def add(self, part, offset: int) -> None:
        self.batches += 1
        limit = self.fmt["partial_unexpected_count"]
        for st, r in zip(self.state, part.results):
            if st["error"] is not None:
                continue
            if _exception_message(r.exception_info):
                st["error"] = r
                continue
            res = r.result or {}
            kind = r.expectation_config.type
            st["element_count"] += res.get("element_count", 0)
            st["unexpected_count"] += res.get("unexpected_count") or 0
            st["missing_count"] += res.get("missing_count") or 0
            st["values"] = (st["values"] + list(res.get("partial_unexpected_list") or []))[:limit]
            st["index"] = (st["index"] + [offset + int(i) for i in res.get("partial_unexpected_index_list") or []])[:limit]
            if kind == "expect_table_row_count_to_be_between":
                st["observed"] = (st["observed"] or 0) + (res.get("observed_value") or 0)
            elif kind == "expect_column_max_to_be_between":
                values = [v for v in (st["observed"], res.get("observed_value")) if v is not None]
                st["observed"] = max(values) if values else None
            elif kind == "expect_column_distinct_values_to_contain_set":
                now = set(res.get("partial_missing_list") or [])
                st["missing_list"] = [v for v in st["missing_list"] or [] if v in now]
            st["success"] = st["success"] and r.success

    def finish(self) -> None:
        from great_expectations.expectations.expectation import _format_map_output, _mostly_success
        from great_expectations.expectations.expectation_configuration import parse_result_format

        for i, (st, r) in enumerate(zip(self.state, self.first.results)):
            if st["error"] is not None:
                self.first.results[i] = st["error"]
                continue
            kind, kw = r.expectation_config.type, r.expectation_config.kwargs
            if "unexpected_count" in (r.result or {}):  # a map check: GX's own summary of the sums
                total, unexpected = st["element_count"], st["unexpected_count"]
                nonnull = total - st["missing_count"]
                success = unexpected == 0 or total == 0 or nonnull == 0 or _mostly_success(
                    nonnull, unexpected, kw.get("mostly", 1.0))
                out = _format_map_output(result_format=parse_result_format(self.fmt), success=success,
                                         element_count=total, unexpected_count=unexpected,
                                         nonnull_count=nonnull if "missing_count" in r.result else None,
                                         unexpected_list=_json_safe(st["values"]), unexpected_index_list=st["index"])
                r.success, r.result = bool(out["success"]), out["result"]
            elif kind in ("expect_table_row_count_to_be_between", "expect_column_max_to_be_between"):
                obs, low, high = _json_safe(st["observed"]), kw.get("min_value"), kw.get("max_value")
                r.result = {**(r.result or {}), "observed_value": obs}
                r.success = bool(obs is not None and (low is None or obs >= low) and (high is None or obs <= high))
            elif kind == "expect_column_distinct_values_to_contain_set":
                missing = st["missing_list"] or []
                r.result = {**(r.result or {}), "missing_count": len(missing), "partial_missing_list": missing}
                r.success = not missing
            else:  # column present: the same on every batch
                r.success = bool(st["success"])
        results = self.first.results
        ok = sum(bool(r.success) for r in results)
        self.first.success = bool(ok == len(results))
        self.first.statistics.update(evaluated_expectations=len(results), successful_expectations=ok,
                                     unsuccessful_expectations=len(results) - ok,
                                     success_percent=100.0 * ok / len(results) if results else None)


def _failure(r, check: str, column: str | None, columns: list, counts: pd.Series, rows: int,
             samples: list[dict]) -> Failure:
    """One failed check in words: `columns` of the user's frame, `counts` the split's rows per
    class (`SplitSummary.counts`), `samples` its first failing rows (`_sample`)."""
    res = r.result or {}
    kw = r.expectation_config.kwargs
    error = _exception_message(r.exception_info)
    if error:
        return Failure(check, column, f"GX could not evaluate it: {error}")
    if check == REQUIRED_COLUMN:
        return Failure(check, column, f"column {column!r} not found; columns found: {list(map(str, columns))}")
    if check == ROW_COUNT:
        return Failure(check, None, f"{res.get('observed_value')} rows; expected between "
                       f"{kw.get('min_value')} and {kw.get('max_value')}")
    if check == CLASS_BALANCE:
        name, count = (counts.index[0], int(counts.iloc[0])) if len(counts) else (None, 0)
        return Failure(check, column, f"class {name!r} holds {count} of {int(counts.sum())} labelled rows "
                       f"({res.get('observed_value', 0):.1%}); at most {kw.get('max_value'):.1%} allowed", count)
    if check == CLASSES_PRESENT:
        missing = set(res.get("partial_missing_list") or [])
        absent = [n for n in kw["value_set"] if n in missing]  # in label-map order (GX returns a set's order)
        present = {str(k): int(v) for k, v in counts.items()}
        return Failure(check, column, f"no rows of class(es) {absent}; the label map is {list(kw['value_set'])}, "
                       f"this split has {present}", len(absent))
    count = int(res.get("unexpected_count") or 0)
    n = res.get("element_count", rows)
    details = f"{count} of {n} rows"
    if check == LABEL_IN_SET:
        values = ", ".join(f"{d['value']!r} ({d['count']}x)" for d in res.get("partial_unexpected_counts", []))
        details += f"; unexpected labels include {values}; declared: {list(kw.get('value_set'))}"
    elif check == TEXT_LENGTH:
        bounds = [kw.get(k) for k in ("min_value", "max_value")]
        low, high = ("" if b is None else int(b) for b in bounds)  # GX hands bounds back as floats
        details += f" outside {low}..{high} characters"
    elif check == CLASS_ROWS_MIN:
        minimum = int(kw["min_value"])  # GX hands bounds back as floats
        small = {str(k): int(v) for k, v in counts.items() if v < minimum}
        details = f"class(es) with fewer than {minimum} rows: {small}"
    elif check == LEAKAGE:
        details += (f" ({count / max(1, n):.1%}) have a text that is also in train; at most "
                    f"{1 - kw.get('mostly', 1.0):.1%} allowed")
    elif check == DUPLICATES:
        details += (f" ({count / max(1, n):.1%}) share their exact text with another row; at most "
                    f"{1 - kw.get('mostly', 1.0):.1%} allowed")
    return Failure(check, column, details, count, samples)


def _shorten(text: Any) -> Any:
    if isinstance(text, str) and len(text) > _TEXT_SHOWN:
        return text[:_TEXT_SHOWN - 3] + "..."
    return text


def _sample(df: pd.DataFrame, i: int, offset: int = 0) -> dict:
    """Row i (0-based position in `df`, a batch starting at row `offset` of its file) as the user
    wrote it: 1-based row number in the file, shortened text, raw label."""
    text = df[TEXT].iloc[i] if TEXT in df.columns else None
    label = df[LABEL].iloc[i] if LABEL in df.columns else None
    row = {"row": offset + i + 1, "text": _json_safe(_shorten(text)), "label": _json_safe(label)}
    if TEXT_PAIR in df.columns:
        row["text_pair"] = _json_safe(_shorten(df[TEXT_PAIR].iloc[i]))
    return row


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


def _json_safe(obj: Any, max_str: int | None = None) -> Any:
    """NaN -> None and numpy scalars -> Python, so reports are strict JSON; long strings shortened."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v, max_str) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, max_str) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, str):
        if max_str is not None and len(obj) > max_str:
            return f"{obj[:max_str]}... ({len(obj):,} characters)"
        return obj
    if obj is None or isinstance(obj, (int, float, bool)):
        return obj
    return str(obj)


# --------------------------------------------------------------------------- label maps


def teacher_label_failure(data_labels: list[str], teacher_labels: list[str] | None, teacher: str,
                          finetune: str | bool) -> Failure | None:
    """The data's label map against the head the teacher checkpoint already has, if any.

    A head for another number of classes cannot be loaded for this data at all; a head with
    named classes that differ from the data's would be silently replaced (and its training lost)
    unless `teacher.finetune` is true, which says that is intended.
    """
    if teacher_labels is None:
        return None  # no classification head: the teacher stage trains one for the data's labels
    where = f"teacher {teacher!r} classifies into {teacher_labels}; the data's label map is {data_labels}"
    if len(teacher_labels) != len(data_labels):
        return Failure(LABEL_MAP, None, f"{where}: a {len(teacher_labels)}-class head cannot serve "
                       f"{len(data_labels)} classes; use another teacher or fix data.labels")
    generic = all(str(n) == f"LABEL_{i}" for i, n in enumerate(teacher_labels))
    if generic or finetune is True or list(teacher_labels) == list(data_labels):
        return None
    if sorted(teacher_labels) == sorted(data_labels):
        return Failure(LABEL_MAP, None, f"{where}: same classes in another order; declare "
                       f"data.labels: {list(teacher_labels)} to keep the teacher's head")
    return Failure(LABEL_MAP, None, f"{where}: they disagree; fix data.labels, or set teacher.finetune: true "
                   "to train a new head")


# --------------------------------------------------------------------------- reports


def unreadable(split: str, file: str, message: str) -> SplitValidation:
    """A split whose file could not be read at all (a `DataError` from `read_source`)."""
    prefix = f"{file}: "
    details = message[len(prefix):] if message.startswith(prefix) else message
    return SplitValidation(split=split, file=file, rows=None, success=False,
                           failures=[Failure(READABLE, None, details)])


def format_failures(results: list[SplitValidation]) -> str:
    """A readable report of every failed check: file, split, check, column, count, sample rows."""
    failed = [r for r in results if not r.success]
    if not failed:
        return f"data validation passed ({len(results)} split(s))"
    n = sum(len(r.failures) for r in failed)
    lines = [f"data validation failed: {n} check(s) in {len(failed)} of {len(results)} split(s)"]
    for r in failed:
        rows = f", {r.rows} rows" if r.rows is not None else ""
        lines.append(f"{r.file} (split {r.split!r}{rows}):")
        for f in r.failures:
            lines.extend(_failure_lines(f))
    return "\n".join(lines)


def _failure_lines(f: Failure, indent: str = "  ") -> list[str]:
    where = f" [column {f.column!r}]" if f.column else ""
    lines = [f"{indent}- {f.expectation}{where}: {f.details}"]
    for s in f.sample_rows:
        pair = f" text_pair={s['text_pair']!r}" if "text_pair" in s else ""
        lines.append(f"{indent}    row {s['row']}: label={s['label']!r} text={s['text']!r}{pair}")
    return lines


def format_warnings(results: list[SplitValidation]) -> list[str]:
    return [line for r in results for w in r.warnings
            for line in [f"warning: {r.file} (split {r.split!r}):"] + _failure_lines(w)]


def summary_markdown(report: dict, shift: dict | None = None, docs: str | None = None) -> str:
    """The validation summary for the Prefect artifact: per split, what failed or warned, with rows."""
    verdict = "PASSED" if report.get("success") else "FAILED"
    if report.get("success") and shift and shift.get("status") == "failed":
        verdict = "FAILED (length shift)"
    out = [f"# Data validation: {verdict}", "", "| split | file | rows | failures | warnings |", "|---|---|--:|--:|--:|"]
    for r in report.get("results", []):
        rows = "-" if r.get("rows") is None else f"{r['rows']:,}"
        out.append(f"| {r['split']} | `{r['file']}` | {rows} | {len(r['failures'])} | {len(r.get('warnings', []))} |")
    for r in report.get("results", []):
        for kind, items in (("Failed", r["failures"]), ("Warning", r.get("warnings", []))):
            for f in items:
                where = f" (column `{f['column']}`)" if f.get("column") else ""
                out += ["", f"**{kind}: {f['expectation']}**{where} in `{r['file']}` ({r['split']}): {_md(f['details'])}"]
                for s in f.get("sample_rows", []):
                    out.append(f"- row {s['row']}: label `{s['label']!r}`, text `{_md(repr(s['text']))}`")
    if shift is not None:
        out += ["", f"**Text length vs the champion's data: {shift['status']}**: {_md(shift['reason'])}"]
    if docs:
        out += ["", f"Full Great Expectations result (Data Docs): `{docs}`"]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("`", "'")
