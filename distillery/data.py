"""Labelled text tables: reading user files, the label map, and validated splits.

`read_table` turns a user's CSV / TSV / Parquet file into a two-column frame
(`text`, `label`) or fails with one `DataError` line naming the file and the
problem, so a bad path or format stops the pipeline before any training.
`LabelMap` fixes the class order once (declared in params, else inferred from
train) and is what a model directory stores. Validated splits are written as
Parquet with an int64 class index, in one directory swapped into place whole,
with a manifest of the md5 of every source file as it was read: the training
stages check it (`check_validated`), so data that changed after validation is
never trained on, even by a direct `distillery stage NAME` call (in the flow, DVC's own record
decides what runs; see distillery/lineage.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from distillery.errors import DistilleryError
from distillery.fileio import atomic_dir, write_atomically
from distillery.lineage import MISSING, content_md5

TEXT = "text"
TEXT_PAIR = "text_pair"  # the second text of a sentence-pair task (data.text_pair_column)
LABEL = "label"

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET = {".parquet", ".pq"}
# Leading zeros ("01") stay strings: "01" and "1" must not silently merge into one class.
_INT_RE = re.compile(r"^[+-]?(0|[1-9][0-9]*)$")
# An integer written as a float ("1.0", "1.", "-2.00"): the same class as the integer.
_INT_FLOAT_RE = re.compile(r"^([+-]?(0|[1-9][0-9]*))\.0*$")
# A zero-padded integer ("01", "007"): kept as written (codes), but an error beside its integer.
_PADDED_INT_RE = re.compile(r"^[+-]?0[0-9]+$")
# How tools spell a missing float in a text export (pandas/numpy "nan", pandas "<NA>"): in a
# label column it is a missing label, never a class. (A text that reads "nan" stays a text.)
_NULL_LABEL_RE = re.compile(r"^(nan|<na>)$", re.IGNORECASE)
MANIFEST_FILE = "manifest.json"
# Rows per Parquet row group of a validated split: the unit `iter_split` reads, so a stage that
# streams a split holds one group (a few MB of text), not the file.
SPLIT_ROW_GROUP = 8192
LABELS_FILE = "labels.json"
# Rows read at once where a stage needs a few rows of a split (`iter_split` with a limit,
# `SplitInputs.take`): a row group of SST-2-length texts is small, of 1.7 kB texts 14 MB (50 MB to read).
DECODE_ROWS = 1024
_STREAM_BUFFER = 1 << 20


class DataError(DistilleryError, ValueError):
    """A data file (or label set) that cannot be used; the message names the file and problem."""


# --------------------------------------------------------------------------- reading


@dataclass
class SourceTable:
    """A user's table as read: the `text`/`label` frame and the md5 of the exact bytes parsed."""

    frame: pd.DataFrame
    md5: str


def read_table(path: str | Path, text_column: str, label_column: str,
               text_pair_column: str | None = None) -> pd.DataFrame:
    """Read a labelled text table into a frame with exactly the columns `text`, `label` (and
    `text_pair` for sentence-pair tasks); other columns of the file are ignored.

    The format follows the extension (.csv, .tsv/.tab, .parquet/.pq); a UTF-8 byte-order
    mark is ignored. Empty cells become null (not ""), so validation can report them; only
    empty cells do: a text that reads "NA" or "null" is kept as text. Labels are normalised
    (`normalise_labels`): integer-like spellings (1, 1.0, " 1 ") are one int class.
    """
    return read_source(path, text_column, label_column, text_pair_column).frame


def _check_columns(path: Path, df: pd.DataFrame, roles: list[tuple[str, str]], suffix: str) -> None:
    for role, col in roles:
        if col not in df.columns:
            raise DataError(f"{path}: {role} column {col!r} not found; columns found: "
                            f"{list(map(str, df.columns))}{_delimiter_hint(df, suffix)}")


def _text_columns(path: Path, df: pd.DataFrame, roles: list[tuple[str, str]]) -> dict:
    """The text (and text pair) columns, checked to hold strings; the label role is the last."""
    out = {}
    for role, col in roles[:-1]:
        text = df[col].reset_index(drop=True)
        kind = pd.api.types.infer_dtype(text, skipna=True)
        if kind not in ("string", "empty"):
            raise DataError(f"{path}: {role} column {col!r} holds {kind} values, expected strings")
        out[TEXT if role == "text" else TEXT_PAIR] = text
    return out


def read_source(path: str | Path, text_column: str, label_column: str,
                text_pair_column: str | None = None) -> SourceTable:
    """`read_table`, plus the md5 of the bytes it parsed (read once: what is hashed is what is parsed)."""
    path = Path(path)
    roles = _source_roles(path, text_column, label_column, text_pair_column)
    suffix = path.suffix.lower()
    with _open_bytes(path) as fh:
        raw = fh.read()
    if suffix in _PARQUET:
        df = _read_parquet(path, raw, [c for _, c in roles])
    else:
        df = _read_delimited(path, raw, _DELIMITERS[suffix])
    _check_columns(path, df, roles, suffix)
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (header only)")
    out = _text_columns(path, df, roles)
    out[LABEL] = normalise_labels(df[label_column].reset_index(drop=True), f"{path}: label column {label_column!r}")
    return SourceTable(pd.DataFrame(out), hashlib.md5(raw).hexdigest())


# Rows per batch when a user's file is streamed (`iter_source`): the validate stage holds one
# batch (and GX's derived frame of it), never the file. Two validated row groups.
SOURCE_BATCH_ROWS = 2 * 8192
_READ_BYTES = 1 << 20


def _source_roles(path: Path, text_column: str, label_column: str,
                  text_pair_column: str | None) -> list[tuple[str, str]]:
    roles = [("text", text_column)] + ([("text pair", text_pair_column)] if text_pair_column else []) \
        + [("label", label_column)]
    if len({c for _, c in roles}) != len(roles):
        raise DataError(f"{path}: the text, text pair and label columns must differ, got "
                        f"{[c for _, c in roles]}")
    suffix = path.suffix.lower()
    if suffix not in _DELIMITERS and suffix not in _PARQUET:
        raise DataError(f"{path}: unknown file extension {path.suffix!r}; "
                        "expected .csv, .tsv, .tab, .parquet or .pq")
    _check_readable(path)
    return roles


def source_md5(path: str | Path) -> str:
    """The md5 of a user's file, read in blocks; for a CSV/TSV also the checks `read_source` makes
    on the bytes (not empty, UTF-8, with the same message naming the byte offset and line)."""
    path = Path(path)
    delimited = path.suffix.lower() in _DELIMITERS
    h, carry, base, lines, blank = hashlib.md5(), b"", 0, 0, True
    with _open_bytes(path) as fh:
        while True:
            block = fh.read(_READ_BYTES)
            h.update(block)
            if not delimited:
                if not block:
                    break
                continue
            blank = blank and not block.strip()
            buf, carry = carry + block, b""
            try:
                buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                if block and exc.reason == "unexpected end of data":  # a character cut by the block end
                    buf, carry = buf[:exc.start], buf[exc.start:]
                else:
                    line = lines + buf.count(b"\n", 0, exc.start) + 1
                    raise DataError(f"{path}: not UTF-8 text (invalid byte 0x{buf[exc.start]:02x} "
                                    f"at byte offset {base + exc.start}, line {line}); save the file as UTF-8") from None
            base, lines = base + len(buf), lines + buf.count(b"\n")
            if not block:
                break
    if delimited and blank:
        raise DataError(f"{path}: file is empty")
    return h.hexdigest()


class _HashingReader(io.RawIOBase):
    """A binary file that hashes the bytes read through it (what is hashed is what is parsed)."""

    def __init__(self, fh):
        self.fh, self.md5 = fh, hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.fh.readinto(b)
        self.md5.update(memoryview(b)[:n])
        return n

    def rest(self) -> str:
        """The md5 of the whole file: what the parser left unread is read (and hashed) here."""
        while self.read(_READ_BYTES):
            pass
        return self.md5.hexdigest()


def iter_source(path: str | Path, text_column: str, label_column: str, text_pair_column: str | None = None,
                md5: str | None = None, batch_rows: int = SOURCE_BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """`read_source` in batches of at most `batch_rows` rows, each frame indexed by its rows'
    positions in the file, with the same checks and the same `DataError` messages (the zero-padded
    label check spans the whole file: it is raised after the last batch). `md5`: what
    `source_md5` gave; the bytes parsed must hash to it (else the file changed while read)."""
    path = Path(path)
    roles = _source_roles(path, text_column, label_column, text_pair_column)
    md5 = md5 or source_md5(path)
    suffix = path.suffix.lower()
    labels = _LabelSpellings(f"{path}: label column {label_column!r}")
    offset = 0
    frames = _iter_parquet(path, [c for _, c in roles], batch_rows) if suffix in _PARQUET else \
        _iter_delimited(path, _DELIMITERS[suffix], batch_rows, md5)
    for df in frames:
        if offset == 0:
            _check_columns(path, df, roles, suffix)
        if len(df) == 0:
            continue
        out = _text_columns(path, df, roles)
        out[LABEL] = labels.normalise(df[label_column].reset_index(drop=True), offset)
        frame = pd.DataFrame(out)
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame
        del frame, out, df
        _release_freed_memory()
    if offset == 0:
        raise DataError(f"{path}: no data rows (header only)")
    labels.check()


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`) once a batch is done with: a
    batch's texts are many kB-sized strings, which glibc takes from its heap and, once freed, keeps
    there in fragments; without this, RSS crept up batch after batch (measured: +80 MB over four
    batches of 16,384 rows of 1.7 kB texts). A no-op where there is no glibc."""
    import ctypes
    import ctypes.util

    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


_LIBC = None


def _iter_parquet(path: Path, columns: list[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    """Row groups one by one (see `iter_split`); the header frame first when a column is missing.
    A file that changes while read (size or mtime) is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    before = path.stat()
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = [c for c in columns if c in names]
        if len(wanted) < len(columns):  # let iter_source name the missing column
            yield pd.DataFrame(columns=names)
            return
        yield pd.DataFrame(columns=wanted)  # no rows: the columns, checked before any batch
        for group in range(pf.metadata.num_row_groups):
            for batch in pf.read_row_group(group, columns=wanted, use_threads=False).to_batches(max(1, batch_rows)):
                yield batch.to_pandas()
    except (pa.ArrowException, OSError) as exc:
        msg = " ".join(str(exc).split())
        raise DataError(f"{path}: not a readable Parquet file (truncated or corrupt?): {msg}") from None
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise DataError(f"{path}: changed while it was read; run again")


def _iter_delimited(path: Path, sep: str, batch_rows: int, md5: str) -> Iterator[pd.DataFrame]:
    """pandas' chunked reader with `_read_delimited`'s options, through a hashing reader."""
    kwargs: dict[str, Any] = dict(sep=sep, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    if sep == "\t":
        kwargs["quoting"] = csv.QUOTE_NONE
    with _open_bytes(path) as raw:
        hashing = _HashingReader(raw)
        # utf-8-sig: a BOM from Excel/Notepad is harmless (source_md5 has checked the encoding)
        text = io.TextIOWrapper(io.BufferedReader(hashing, _READ_BYTES), encoding="utf-8-sig", newline="")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                reader = pd.read_csv(text, chunksize=max(1, batch_rows), **kwargs)
            with reader:
                header = True
                while True:
                    with warnings.catch_warnings():
                        warnings.simplefilter("error", pd.errors.ParserWarning)
                        try:
                            df = reader.get_chunk()
                        except StopIteration:
                            df = None
                    if header:  # the columns first (a header-only file yields no chunk)
                        header = False
                        yield pd.DataFrame(columns=df.columns if df is not None else _header_columns(reader))
                    if df is None:
                        break
                    yield df
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: file is empty") from None
        except (pd.errors.ParserError, pd.errors.ParserWarning, csv.Error) as exc:
            msg = " ".join(str(exc).split())
            raise DataError(f"{path}: cannot parse as {'TSV' if sep == chr(9) else 'CSV'}: {msg}") from None
        if hashing.rest() != md5:
            raise DataError(f"{path}: changed while it was read; run again")


def _header_columns(reader) -> list:
    """The header's column names of a chunked reader that yielded no rows."""
    names = getattr(getattr(reader, "_engine", None), "orig_names", None)
    return list(names) if names is not None else []


class _LabelSpellings:
    """`normalise_labels` batch by batch, with its zero-padded spelling check over the whole file:
    the integers seen, and per zero-padded string its count and first rows."""

    def __init__(self, where: str):
        self.where, self.ints = where, set()
        self.padded: dict[str, list] = {}  # value -> [count, [(row, raw) ...first 5]]

    def normalise(self, labels: pd.Series, offset: int) -> pd.Series:
        values = [normalise_label(v) for v in labels]
        self.ints.update(v for v in values if isinstance(v, int) and not isinstance(v, bool))
        for i, v in enumerate(values):
            if isinstance(v, str) and _PADDED_INT_RE.match(v):
                entry = self.padded.setdefault(v, [0, []])
                entry[0] += 1
                if len(entry[1]) < 5:
                    entry[1].append((offset + i, labels.iloc[i]))
        return _label_series(values, labels.name)

    def check(self) -> None:
        clash = {v: e for v, e in self.padded.items() if int(v) in self.ints}
        if clash:
            rows = sorted(r for e in clash.values() for r in e[1])[:5]
            n = sum(e[0] for e in clash.values())
            shown = ", ".join(f"row {i + 1}: {raw!r}" for i, raw in rows)
            raise DataError(f"{self.where}: label(s) {sorted(clash)} are zero-padded spellings of "
                            f"integer label(s) also present, which would make two classes of one; write them "
                            f"one way ({shown}{f' and {n - 5} more' if n > 5 else ''})")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV/TSV/Parquet file")


def _open_bytes(path: Path):
    """Open for reading, turning OS errors (permission, races) into a DataError."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied (cannot read the file)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open file: {exc.strerror or exc}") from None


def _read_delimited(path: Path, raw: bytes, sep: str) -> pd.DataFrame:
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    try:
        # Decode ourselves: pandas decodes in chunks and reports offsets within a chunk.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} "
                        f"at byte offset {exc.start}, line {line}); save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a BOM from Excel/Notepad is harmless
    kwargs: dict[str, Any] = dict(
        sep=sep,
        dtype=str,
        # Only empty cells are missing; "NA", "None", "null" are legitimate texts.
        keep_default_na=False,
        na_values=[""],
        # Without this a row with one extra field silently becomes the index.
        index_col=False,
    )
    if sep == "\t":
        kwargs["quoting"] = csv.QUOTE_NONE  # SST-2 and most TSVs carry bare quote characters
    try:
        with warnings.catch_warnings():
            # index_col=False turns an over-long first row into a truncation warning: refuse it.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, csv.Error) as exc:
        msg = " ".join(str(exc).split())
        raise DataError(f"{path}: cannot parse as {'TSV' if sep == chr(9) else 'CSV'}: {msg}") from None


def _read_parquet(path: Path, raw: bytes, columns: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(pa.BufferReader(raw))
        names = pf.schema_arrow.names
        wanted = [c for c in columns if c in names]
        if len(wanted) < len(columns):  # let read_table name the missing column
            return pd.DataFrame(columns=names)
        return pf.read(columns=wanted).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        msg = " ".join(str(exc).split())
        raise DataError(f"{path}: not a readable Parquet file (truncated or corrupt?): {msg}") from None


def _delimiter_hint(df: pd.DataFrame, suffix: str) -> str:
    """A one-column header that contains another delimiter means the wrong format was assumed."""
    if len(df.columns) != 1:
        return ""
    header = str(df.columns[0])
    for sep, name in (("\t", "tabs"), (",", "commas"), (";", "semicolons"), ("|", "pipes")):
        if sep in header:
            return f" (the header contains {name}: is the extension {suffix!r} right?)"
    return ""


def normalise_label(v: Any) -> Any:
    """One label value as the class it means: integer-like spellings (1, 1.0, "1", " 1 ", "+1",
    "1.0") become the int; other strings lose surrounding whitespace; "nan" / "<NA>" / blank
    become null. Zero-padded strings ("01") stay strings (they may be codes), and bools stay bools."""
    if _is_null(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if float(v).is_integer() and abs(v) < 2**63 else float(v)
    if isinstance(v, str):
        t = v.strip()
        if not t or _NULL_LABEL_RE.match(t):
            return None
        m = _INT_RE.match(t) or _INT_FLOAT_RE.match(t)
        if m:
            n = int(m.group(1) if m.re is _INT_FLOAT_RE else t)
            return n if -2**63 <= n < 2**63 else t  # beyond int64: an id, keep it as written
        return t
    return v


def normalise_labels(labels: pd.Series, where: str = "labels") -> pd.Series:
    """`normalise_label` on every value: int64 when every label is an int and none is null,
    else objects (nulls stay null: validation reports them). Two spellings that would still be
    two classes for one meaning ("01" beside 1) raise a `DataError` naming `where` and the rows."""
    values = [normalise_label(v) for v in labels]
    ints = {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
    clash = [i for i, v in enumerate(values)
             if isinstance(v, str) and _PADDED_INT_RE.match(v) and int(v) in ints]
    if clash:
        shown = ", ".join(f"row {i + 1}: {labels.iloc[i]!r}" for i in clash[:5])
        raise DataError(f"{where}: label(s) {sorted({values[i] for i in clash})} are zero-padded spellings of "
                        f"integer label(s) also present, which would make two classes of one; write them "
                        f"one way ({shown}{f' and {len(clash) - 5} more' if len(clash) > 5 else ''})")
    return _label_series(values, labels.name)


def _label_series(values: list, name) -> pd.Series:
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pd.Series(values, name=name, dtype="int64")
    if values and all(isinstance(v, bool) for v in values):
        return pd.Series(values, name=name, dtype=bool)
    return pd.Series(values, name=name, dtype=object)


# --------------------------------------------------------------------------- labels


def _is_int_like(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    return isinstance(v, (int, np.integer)) or (isinstance(v, str) and bool(_INT_RE.match(v)))


@dataclass
class LabelMap:
    """The ordered class names; position i is class index i in every model and split.

    Labels may be ints in data and strings in params (or the reverse), so all
    comparisons go through `str()`.
    """

    names: list[str]

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        if len(self.names) < 2:
            raise DataError(f"a label map needs at least two labels, got {self.names}")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"labels must be distinct, got {self.names}")

    @classmethod
    def from_labels(cls, declared: Sequence[str | int] | None, train_labels: pd.Series) -> LabelMap:
        """Declared order when given; else the distinct train labels, sorted (numerically if ints)."""
        if declared is not None:  # spelt as the data's labels are read: " 1.0" is class 1
            return cls([normalise_label(v) for v in declared])
        distinct = list(dict.fromkeys(v for v in train_labels if not _is_null(v)))
        if len(distinct) < 2:
            raise DataError(f"cannot infer a label set from the training labels: found "
                            f"{len(distinct)} distinct value(s) {[str(v) for v in distinct]}, need 2 or more")
        if all(_is_int_like(v) for v in distinct):
            distinct = sorted(distinct, key=lambda v: int(v))
        else:
            distinct = sorted(distinct, key=str)
        if len({str(v) for v in distinct}) != len(distinct):
            raise DataError(f"training labels collide when compared as text: {distinct}")
        return cls(distinct)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def encode(self, labels: pd.Series | Sequence[Any], source: str = "labels") -> np.ndarray:
        """Class indices (int64) for raw labels; unknown or null labels raise, naming rows."""
        lookup = self.label2id
        values = list(labels)
        codes = np.fromiter((-1 if _is_null(v) else lookup.get(str(v), -1) for v in values),
                            dtype=np.int64, count=len(values))
        bad = np.flatnonzero(codes < 0)
        if len(bad):
            shown = ", ".join(f"row {i + 1}: {_show(values[i])}" for i in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise DataError(f"{source}: {len(bad)} label(s) not in the label map {self.names}: {shown}{more}")
        return codes

    def to_json(self) -> dict[str, list[str]]:
        return {"labels": list(self.names)}

    @classmethod
    def from_json(cls, obj: Any) -> LabelMap:
        if not isinstance(obj, dict) or not isinstance(obj.get("labels"), list):
            raise DataError(f'a label map must be {{"labels": [...]}}, got {obj!r:.200}')
        return cls(obj["labels"])


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _show(v: Any) -> str:
    return "null" if _is_null(v) else repr(v)


# --------------------------------------------------------------------------- splits


@dataclass
class TextDataset:
    """Texts (and, for sentence-pair tasks, their second texts) and int64 class indices, as the
    training code consumes them."""

    texts: list[str]
    labels: np.ndarray
    pairs: list[str] | None = None

    def __post_init__(self):
        self.texts = list(self.texts)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but labels of shape {self.labels.shape}")
        if self.pairs is not None:
            self.pairs = list(self.pairs)
            if len(self.pairs) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(self.pairs)} second texts")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list:
        """What a tokenizer or classifier takes: the texts, or (text, text_pair) tuples."""
        return self.texts if self.pairs is None else list(zip(self.texts, self.pairs))

    def subset(self, idx) -> TextDataset:
        """The rows at `idx` (a slice, or positions)."""
        pick = (lambda xs: xs[idx]) if isinstance(idx, slice) else (lambda xs: [xs[i] for i in idx])
        return TextDataset(pick(self.texts), self.labels[idx],
                           None if self.pairs is None else pick(self.pairs))


def save_split(data: pd.DataFrame | TextDataset, path: str | Path) -> Path:
    """Write a validated split as Parquet (`text`: string, [`text_pair`: string,] `label`: int64), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if isinstance(data, pd.DataFrame):
        missing = [c for c in (TEXT, LABEL) if c not in data.columns]
        if missing:
            raise DataError(f"{path}: cannot save split, missing column(s) {missing}")
        if not pd.api.types.is_integer_dtype(data[LABEL]):
            raise DataError(f"{path}: cannot save split, labels must be int class indices "
                            f"(encode them with LabelMap.encode), got dtype {data[LABEL].dtype}")
        data = TextDataset(data[TEXT].tolist(), data[LABEL].to_numpy(),
                           data[TEXT_PAIR].tolist() if TEXT_PAIR in data.columns else None)
    if any(not isinstance(t, str) for t in data.texts + (data.pairs or [])):
        raise DataError(f"{path}: cannot save split, every text must be a string (validate first)")
    columns = {TEXT: pa.array(data.texts, pa.string())}
    if data.pairs is not None:
        columns[TEXT_PAIR] = pa.array(data.pairs, pa.string())
    table = pa.table({**columns, LABEL: pa.array(data.labels, pa.int64())})
    write_atomically(path, lambda tmp: pq.write_table(table, tmp, row_group_size=SPLIT_ROW_GROUP))
    return path


def save_split_batches(batches: Iterable[TextDataset], path: str | Path) -> int:
    """`save_split` for a split given in batches: each is written as it comes, in row groups of
    SPLIT_ROW_GROUP rows (as `save_split` writes them), so memory holds a batch, not the split.
    Returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)

    def write(tmp: Path) -> int:
        writer, pending, rows = None, None, 0
        try:
            for data in batches:
                if any(not isinstance(t, str) for t in data.texts + (data.pairs or [])):
                    raise DataError(f"{path}: cannot save split, every text must be a string (validate first)")
                columns = {TEXT: pa.array(data.texts, pa.string())}
                if data.pairs is not None:
                    columns[TEXT_PAIR] = pa.array(data.pairs, pa.string())
                table = pa.table({**columns, LABEL: pa.array(data.labels, pa.int64())})
                pending = table if pending is None else pa.concat_tables([pending, table])
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                whole = len(pending) // SPLIT_ROW_GROUP * SPLIT_ROW_GROUP
                if whole:
                    writer.write_table(pending.slice(0, whole), row_group_size=SPLIT_ROW_GROUP)
                    rest = pending.slice(whole)  # copied: a slice would keep the written rows' buffers alive
                    pending = pa.table({c: pa.array(rest.column(c).to_pylist(), rest.schema.field(c).type)
                                        for c in rest.column_names}) if len(rest) else None
                rows += len(table)
                del table, columns, data
                pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed pages too
                _release_freed_memory()
            if writer is None:
                raise DataError(f"{path}: cannot save split, no rows")
            if pending is not None and len(pending):
                writer.write_table(pending, row_group_size=SPLIT_ROW_GROUP)
        finally:
            if writer is not None:
                writer.close()
        return rows

    count = []
    write_atomically(path, lambda tmp: count.append(write(tmp)))
    return count[0]


def load_split(path: str | Path) -> TextDataset:
    """Read a split written by `save_split`, checking its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    _check_readable(path)
    with _open_bytes(path) as fh:
        try:
            table = pq.read_table(fh)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file: {' '.join(str(exc).split())}") from None
    _check_split_schema(path, table.schema)
    _check_split_nulls(path, table, 0)
    has_pair = TEXT_PAIR in table.schema.names
    return TextDataset(table.column(TEXT).to_pylist(), table.column(LABEL).to_numpy(),
                       table.column(TEXT_PAIR).to_pylist() if has_pair else None)


def iter_split(path: str | Path, batch_rows: int, limit: int | None = None) -> Iterator[TextDataset]:
    """`load_split` in batches of at most `batch_rows` rows, the first `limit` rows at most: Parquet
    is read a row group at a time, so memory holds a row group and a batch, never the split.

    Row groups are read one by one without Arrow's thread pool: `iter_batches` and threaded reads
    left freed memory with the allocators of several threads (RSS grew with the file, measured:
    +160 MB over 100 MB of text), one thread reuses its own (+50 MB, flat after a few groups).
    With a `limit`, the rows are streamed DECODE_ROWS at a time (`_stream_rows`), never a whole row
    group: the first 512 rows of a split of 8,192-row groups cost a few MB, not one group's 50."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    _check_readable(path)
    try:
        pf = pq.ParquetFile(path)
        _check_split_schema(path, pf.schema_arrow)
        has_pair = TEXT_PAIR in pf.schema_arrow.names
        if limit is None:
            batches = (b for g in range(pf.metadata.num_row_groups)
                       for b in pf.read_row_group(g, use_threads=False).to_batches(max(1, batch_rows)))
        else:
            batches = _stream_rows(path, range(pf.metadata.num_row_groups), min(max(1, batch_rows), DECODE_ROWS))
        seen = 0
        for batch in batches:
            if limit is not None:
                if seen >= limit:
                    return
                batch = batch.slice(0, limit - seen)
            _check_split_nulls(path, batch, seen)
            yield TextDataset(batch.column(TEXT).to_pylist(), batch.column(LABEL).to_numpy(),
                              batch.column(TEXT_PAIR).to_pylist() if has_pair else None)
            seen += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {' '.join(str(exc).split())}") from None


def _stream_rows(path: Path, row_groups, batch_rows: int, columns: list[str] | None = None) -> Iterator:
    """Arrow record batches of at most `batch_rows` rows of these row groups, in order, read through a
    1 MB buffer on one thread: memory holds a page and a batch, not a row group (Arrow's default reads
    a whole column chunk at once)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, buffer_size=_STREAM_BUFFER, pre_buffer=False) as pf:
        for group in row_groups:  # one at a time: given several, Arrow reads ahead into the next ones
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns,
                                       use_threads=False)


class SplitInputs:
    """A split file's model inputs (texts, or (text, text_pair) tuples), read from disk on demand:
    `batches()` streams them a row group at a time (`iter_split`), `take(rows)` decodes only the
    given rows. For stages that must not hold the split (teacher, distill, prune, quantize): what
    the student builder and the tokenizer need, in bounded memory. `limit`: only the first `limit`
    rows are the split's rows (all when None), and nothing past them is read."""

    def __init__(self, path: str | Path, batch_rows: int = SPLIT_ROW_GROUP, limit: int | None = None):
        import pyarrow.parquet as pq

        self.path, self.batch_rows, self.limit = Path(path), batch_rows, limit
        _check_readable(self.path)
        pf = pq.ParquetFile(self.path)
        _check_split_schema(self.path, pf.schema_arrow)
        meta = pf.metadata
        self._n = meta.num_rows if limit is None else min(limit, meta.num_rows)
        self._starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self.pairs = TEXT_PAIR in pf.schema_arrow.names  # the split holds second texts (a sentence-pair task)

    def __len__(self) -> int:
        return self._n

    def batches(self) -> Iterator[list]:
        for batch in iter_split(self.path, self.batch_rows, self.limit):
            yield batch.inputs

    def labels(self) -> np.ndarray:
        """The class indices of the rows (8 bytes a row; no text is read)."""
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        groups = int(np.searchsorted(self._starts, self._n, side="left"))  # the groups that hold the rows
        parts = [pf.read_row_group(g, columns=[LABEL], use_threads=False).column(LABEL).to_numpy()
                 for g in range(groups)]
        return np.concatenate(parts)[: self._n] if parts else np.zeros(0, np.int64)

    def take(self, rows) -> list:
        """The inputs of rows at these positions, in the order given. The row groups that hold them
        are streamed DECODE_ROWS rows at a time, and only the rows asked for become Python strings."""
        import pyarrow as pa

        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"{self.path}: rows out of range 0..{self._n - 1}")
        order = np.argsort(rows, kind="stable")  # positions in file order: one pass over the file
        in_order = rows[order]
        out, i = [None] * len(rows), 0
        columns = [TEXT, TEXT_PAIR] if self.pairs else [TEXT]
        groups = np.unique(np.searchsorted(self._starts, rows, side="right") - 1)
        for g in groups:
            start = int(self._starts[g])
            for batch in _stream_rows(self.path, [int(g)], DECODE_ROWS, columns):
                end = start + batch.num_rows
                j = int(np.searchsorted(in_order, end, side="left"))  # rows asked for before `end`
                if j > i:
                    picked = batch.take(pa.array(in_order[i:j] - start))
                    texts = picked.column(TEXT).to_pylist()
                    inputs = texts if not self.pairs else list(zip(texts, picked.column(TEXT_PAIR).to_pylist()))
                    for k, x in zip(order[i:j], inputs):
                        out[k] = x
                i, start = j, end
                if i == len(order) or in_order[i] >= int(self._starts[g + 1]):
                    break  # the rest of this group holds no row asked for
        return out


def split_rows(path: str | Path) -> int:
    """The number of rows of a split file, from its Parquet footer (nothing else is read)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _check_split_schema(path: Path, schema) -> None:
    import pyarrow as pa

    names = schema.names
    if TEXT not in names or LABEL not in names:
        raise DataError(f"{path}: a split needs columns {[TEXT, LABEL]}, found {names}")
    if not pa.types.is_integer(schema.field(LABEL).type):
        raise DataError(f"{path}: label column must hold int class indices, found {schema.field(LABEL).type}")


def _check_split_nulls(path: Path, table, offset: int) -> None:
    """No null text, text pair or label; else a `DataError` naming the column and the first rows
    (1-based, counted from the start of the file)."""
    import pyarrow.compute as pc

    for col in (TEXT, TEXT_PAIR, LABEL):
        if col not in table.schema.names or not table.column(col).null_count:
            continue
        rows = np.flatnonzero(pc.is_null(table.column(col)).to_numpy(zero_copy_only=False))
        shown = ", ".join(str(offset + i + 1) for i in rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        raise DataError(f"{path}: split contains null texts or labels (column {col!r}, row(s) {shown})")


# --------------------------------------------------------------------------- the validated directory


def write_validated(out_dir: str | Path, splits: dict[str, TextDataset | Iterable[TextDataset]], labels: LabelMap,
                    sources: dict[str, dict]) -> dict:
    """Write the validated splits, the label map and the manifest as one directory, swapped in whole.
    A split is a `TextDataset`, or its batches in order (written one at a time: `save_split_batches`).

    `sources[split]` is {"path": the user's file as named in params, "md5": of the bytes validated}.
    The manifest also records each split file's md5, so a validated file edited by hand is caught too.
    """
    with atomic_dir(out_dir) as tmp:
        manifest: dict[str, Any] = {"labels": labels.names, "splits": {}}
        for name, data in splits.items():
            if isinstance(data, TextDataset):
                split_file, rows = save_split(data, tmp / f"{name}.parquet"), len(data)
            else:  # batches (the validate stage streams them): written as they come
                split_file = tmp / f"{name}.parquet"
                rows = save_split_batches(data, split_file)
            manifest["splits"][name] = {"file": split_file.name, "md5": content_md5(split_file),
                                        "rows": rows, "source": sources[name]["path"],
                                        "source_md5": sources[name]["md5"]}
        (tmp / LABELS_FILE).write_text(json.dumps(labels.to_json(), indent=2))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def check_validated(out_dir: str | Path, root: str | Path) -> dict:
    """Refuse to train on anything but what validation passed: every split file and every source
    file must still have the md5 recorded when it was validated. Returns the manifest."""
    out_dir, root = Path(out_dir), Path(root)
    path = out_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
        splits = manifest["splits"]
    except FileNotFoundError:
        raise DataError(f"{path}: not found: the validated data is incomplete; run the validate stage") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: unreadable manifest; run the validate stage again") from None
    for name, entry in splits.items():
        split_file = out_dir / entry["file"]
        if not split_file.is_file() or content_md5(split_file) != entry["md5"]:
            raise DataError(f"{split_file}: differs from what the validate stage wrote (md5 {entry['md5']}); "
                            "it was changed after validation: run the validate stage again")
        source = root / entry["source"]
        now = content_md5(source) if source.is_file() else MISSING
        if now != entry["source_md5"]:
            raise DataError(f"{entry['source']}: changed since it was validated ({name} split: md5 "
                            f"{entry['source_md5']} when validated, {now} now); nothing was trained on it. "
                            "Run again to validate the new data first")
    return manifest
