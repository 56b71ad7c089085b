"""Validation in batches (issue 18): a user's file streamed in batches (`data.iter_source`) reads
as `read_source` reads it whole, with the same `DataError` messages; the GX suite run batch by
batch against the split's summary (`SuiteRunner.validate_batches`) gives the verdicts, counts,
messages and sample rows (numbered in the file) that one run over the whole split gives."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from distillery.data import DataError, iter_source, read_source, source_md5
from distillery.validation import SuiteRunner, summarise
from tests.test_validation import DATA, LABELS, VCFG, clean


def _streamed(path, batch_rows=3, **columns):
    cols = {"text_column": "review", "label_column": "sentiment", **columns}
    frames = list(iter_source(path, **cols, batch_rows=batch_rows))
    return frames


def _outcome(fn):
    try:
        return fn()
    except DataError as exc:
        return f"DataError: {exc}"


GOOD = "review,sentiment\n" + "".join(f"text {i},{['neg', 'pos'][i % 2]}\n" for i in range(11))
CASES = {
    "good": GOOD,
    "int labels, one null": "review,sentiment\n" + "".join(f"t{i},{i % 3}\n" for i in range(8)) + "t8,\n",
    "bom": "\ufeff" + GOOD,
    "empty": "",
    "blank": "\n\n  \n",
    "header only": "review,sentiment\n",
    "ragged row late": GOOD + "a,b,c\n",
    "extra field first row": "review,sentiment\na,pos,x\nb,neg\n",
    "unclosed quote": GOOD + '"never closed,pos\n',
    "missing column": "review,label\na,pos\n",
    "wrong delimiter": "review;sentiment\na;pos\n",
    "zero-padded beside int, batches apart": "review,sentiment\n" + "".join(f"t{i},1\n" for i in range(7)) + "u,01\nv,2\n",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_csv_reads_as_the_whole_file_reads(tmp_path, case):
    path = tmp_path / "train.csv"
    path.write_text(CASES[case], encoding="utf-8")
    whole = _outcome(lambda: read_source(path, "review", "sentiment"))
    streamed = _outcome(lambda: (_streamed(path), source_md5(path)))
    if isinstance(whole, str):
        assert streamed == whole
        return
    frames, md5 = streamed
    assert md5 == whole.md5
    got = pd.concat(frames)
    assert list(got.index) == list(range(len(whole.frame)))
    assert got.reset_index(drop=True).astype(object).equals(whole.frame.astype(object))


def test_not_utf8_names_the_same_byte_and_line_across_blocks(tmp_path, monkeypatch):
    import distillery.data as data

    monkeypatch.setattr(data, "_READ_BYTES", 7)  # blocks that cut lines and characters
    path = tmp_path / "train.csv"
    path.write_bytes(("review,sentiment\nd\u00e9j\u00e0 vu,pos\n\u00e9t\u00e9,neg\n").encode() + b"caf\xe9,pos\n")
    assert _outcome(lambda: source_md5(path)) == _outcome(lambda: read_source(path, "review", "sentiment"))
    path.write_bytes(("review,sentiment\n\u00e9t\u00e9 \u20ac,pos\n" * 5).encode())
    assert source_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_parquet_streamed_as_read_whole(tmp_path):
    df = pd.DataFrame({"review": [f"t{i}" for i in range(10)], "sentiment": [1.0, 2.0] * 5, "other": range(10)})
    path = tmp_path / "train.parquet"
    df.to_parquet(path, row_group_size=4)
    whole = read_source(path, "review", "sentiment")
    got = pd.concat(_streamed(path, batch_rows=3))
    assert got.reset_index(drop=True).equals(whole.frame) and source_md5(path) == whole.md5
    df.assign(review=range(10)).to_parquet(path)
    assert _outcome(lambda: _streamed(path)) == _outcome(lambda: read_source(path, "review", "sentiment"))


def test_a_file_changed_while_read_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(GOOD)
    md5 = source_md5(path)
    path.write_text(GOOD.replace("text 3", "text 3 changed"))
    with pytest.raises(DataError, match="changed while it was read"):
        list(iter_source(path, "review", "sentiment", md5=md5, batch_rows=4))


def _bad_split() -> pd.DataFrame:
    """40 rows with a problem for every check, spread so that batches of 7 split them."""
    df = clean(60)
    df.loc[[2, 30], "text"] = None
    df.loc[[9, 45], "text"] = "   "
    df.loc[[5, 50], "text"] = "x" * 80
    df.loc[[11, 33, 58], "label"] = ["meh", "meh", "bad"]
    df.loc[[17], "label"] = None
    df.loc[[1, 20, 40, 41, 55, 57, 59], "text"] = "same words"  # repeats across batches only
    return df


def _without_gx(result) -> dict:
    out = result.to_dict()
    out.pop("gx_result")
    return out


@pytest.mark.parametrize("batch_rows", [7, 1000])
def test_validating_in_batches_gives_the_whole_split_verdict(batch_rows):
    df = _bad_split()
    train = clean(60).assign(text=[f"review number {i}" for i in range(60)])
    whole = SuiteRunner().validate(df, "eval", "data/eval.csv", DATA, VCFG, LABELS, train_texts=train["text"])
    batches = [df.iloc[i:i + batch_rows] for i in range(0, len(df), batch_rows)]
    keys = summarise([pd.DataFrame({"text": train["text"]})]).keys
    runner = SuiteRunner()
    parts = runner.validate_batches(batches, "eval", "data/eval.csv", DATA, VCFG, LABELS, summarise([df]), keys)
    assert _without_gx(parts) == _without_gx(whole)
    checks = {f["expectation"] for f in _without_gx(whole)["failures"] + _without_gx(whole)["warnings"]}
    assert len(checks) >= 7, checks  # the case exercises most checks
    # GX's own combined result: one validation of the split, counts over every row.
    gx = parts.gx_result
    assert gx["success"] is False and gx["statistics"] == whole.gx_result["statistics"]
    assert [(e["expectation_type"], e["success"]) for e in gx["expectations"]] == [
        (e["expectation_type"], e["success"]) for e in whole.gx_result["expectations"]]
    mapped = {(e["expectation_type"], e["kwargs"].get("column")): e["result"] for e in gx["expectations"]}
    assert mapped[("expect_table_row_count_to_be_between", None)]["observed_value"] == 60
    not_null = mapped[("expect_column_values_to_not_be_null", "text")]
    assert not_null["unexpected_count"] == 2 and not_null["element_count"] == 60
    assert not_null["partial_unexpected_index_list"] == [2, 30]
    assert len(runner.context.validation_results_store.list_keys()) == 1


def test_a_class_missing_from_some_batches_only_is_present():
    df = clean(40).sort_values("label", kind="stable")  # batches of one class each
    batches = [df.iloc[i:i + 10] for i in range(0, 40, 10)]
    result = SuiteRunner().validate_batches(batches, "train", "t.csv", DATA, VCFG.model_copy(update={
        "suite": VCFG.suite.model_copy(update={"max_class_share": None})}), LABELS, summarise([df]))
    assert result.success, result.failures


def test_key_hashes_are_exact_for_distinct_texts():
    from distillery.validation import key_hashes

    texts = pd.Series([f"text {i}" for i in range(20000)] + ["text 5"])
    hashes = np.sort(key_hashes(texts))
    assert int((hashes[1:] == hashes[:-1]).sum()) == 1
