"""Unit tests for distillery.data: reading tables, the label map, validated splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distillery.data import (DataError, LabelMap, TextDataset, check_validated, load_split, read_source, read_table,
                             save_split, write_validated)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


def test_csv_reads_and_renames_columns(tmp_path):
    p = write(tmp_path / "d.csv", 'review,stars,extra\n"good, really",pos,x\nbad,neg,y\n')
    df = read_table(p, "review", "stars")
    assert list(df.columns) == ["text", "label"]
    assert df["text"].tolist() == ["good, really", "bad"]
    assert df["label"].tolist() == ["pos", "neg"]


def test_integer_labels_come_back_as_ints(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\na,0\nb,1\nc,2\n")
    df = read_table(p, "text", "label")
    assert df["label"].dtype == np.int64
    assert df["label"].tolist() == [0, 1, 2]


def test_mixed_labels_keep_strings_and_zero_padded_beside_int_is_refused(tmp_path):
    df = read_table(write(tmp_path / "a.csv", "text,label\na,0\nb,x\n"), "text", "label")
    assert [str(v) for v in df["label"]] == ["0", "x"]
    # zero-padded codes alone stay as written
    df = read_table(write(tmp_path / "c.csv", "text,label\na,01\nb,02\n"), "text", "label")
    assert df["label"].tolist() == ["01", "02"]
    # "01" beside "1" would be two classes for one meaning: refused, naming file, column and row
    with pytest.raises(DataError, match=r"b\.csv: label column 'label'.*'01'.*row 1"):
        read_table(write(tmp_path / "b.csv", "text,label\na,01\nb,1\n"), "text", "label")


def test_empty_cells_become_null_but_na_text_is_kept(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\n,1\nNA,0\nok,\n")
    df = read_table(p, "text", "label")
    assert pd.isna(df["text"][0])
    assert df["text"][1] == "NA"
    # an int column with a gap keeps its ints and its null (no coercion to float or 0)
    assert df["label"].tolist()[:2] == [1, 0] and df["label"][2] is None


def test_nan_labels_are_missing_but_nan_texts_are_texts(tmp_path):
    p = write(tmp_path / "d.csv", "text,label\nnan,1\nb,NaN\nc,nan\nd,<NA>\ne,0\n")
    df = read_table(p, "text", "label")
    assert df["text"][0] == "nan"
    assert df["label"].tolist() == [1, None, None, None, 0]


def test_read_source_hashes_the_bytes_it_parsed(tmp_path):
    import hashlib

    p = write(tmp_path / "d.csv", "text,label\na,1\n")
    assert read_source(p, "text", "label").md5 == hashlib.md5(p.read_bytes()).hexdigest()
    q = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a"], "label": [1]}).to_parquet(q)
    assert read_source(q, "text", "label").md5 == hashlib.md5(q.read_bytes()).hexdigest()


def test_tsv_with_bare_quotes(tmp_path):
    p = write(tmp_path / "d.tsv", 'sentence\tlabel\nit \'s a "great" film \t1\n" odd start\t0\n')
    df = read_table(p, "sentence", "label")
    assert df["text"].tolist() == ['it \'s a "great" film ', '" odd start']
    assert df["label"].tolist() == [1, 0]


def test_tab_extension_and_bom(tmp_path):
    p = tmp_path / "d.tab"
    p.write_bytes("\ufefftext\tlabel\nhello\tpos\n".encode("utf-8"))
    assert read_table(p, "text", "label")["text"].tolist() == ["hello"]


def test_parquet_reads_and_float_int_labels_become_ints(tmp_path):
    p = tmp_path / "d.PARQUET"
    pd.DataFrame({"t": ["a", "b", None], "y": [1.0, None, 0.0], "z": [1, 2, 3]}).to_parquet(p)
    df = read_table(p, "t", "y")
    assert list(df.columns) == ["text", "label"]
    assert df["label"].tolist() == [1, None, 0]
    assert pd.isna(df["text"][2])


def test_parquet_string_labels(tmp_path):
    p = tmp_path / "d.pq"
    pd.DataFrame({"text": ["a", "b"], "label": ["neg", "pos"]}).to_parquet(p)
    assert read_table(p, "text", "label")["label"].tolist() == ["neg", "pos"]


@pytest.mark.sst2
def test_sst2_dev_loads(sst2_dir):
    df = read_table(sst2_dir / "dev.tsv", "sentence", "label")
    assert len(df) == 872  # per the data README
    assert df["label"].value_counts().to_dict() == {1: 444, 0: 428}
    assert df["text"].notna().all()


# --------------------------------------------------------------------------- read errors


def assert_data_error(path, match, text_col="text", label_col="label"):
    with pytest.raises(DataError) as info:
        read_table(path, text_col, label_col)
    msg = str(info.value)
    assert Path(path).name in msg
    assert match in msg, msg
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope.csv", "file not found")


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    assert_data_error(tmp_path / "dir.csv", "is a directory")


def test_unknown_extension(tmp_path):
    assert_data_error(write(tmp_path / "d.json", "{}"), "unknown file extension '.json'")


def test_permission_denied(tmp_path, monkeypatch):
    p = write(tmp_path / "d.csv", "text,label\na,1\n")

    def deny(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    # Patched rather than chmod: tests may run as root, who can read anything.
    monkeypatch.setattr(Path, "open", deny)
    assert_data_error(p, "permission denied")


def test_empty_file(tmp_path):
    assert_data_error(write(tmp_path / "d.csv", ""), "file is empty")
    assert_data_error(write(tmp_path / "e.tsv", "\n\n"), "file is empty")


def test_header_only(tmp_path):
    assert_data_error(write(tmp_path / "d.csv", "text,label\n"), "no data rows")
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(p)
    assert_data_error(p, "no data rows")


def test_not_utf8_names_byte_offset(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\ncaf\xe9,1\n")
    assert_data_error(p, "byte offset 14, line 2")


def test_wrong_delimiter_lists_columns_found(tmp_path):
    p = write(tmp_path / "d.csv", "sentence\tlabel\nhello\t1\n")
    msg = assert_data_error(p, "text column 'sentence' not found", text_col="sentence")
    assert "columns found: ['sentence\\tlabel']" in msg
    assert "tabs" in msg


def test_ragged_row_is_a_parse_error(tmp_path):
    msg = assert_data_error(write(tmp_path / "d.csv", "text,label\na,1\nb,2,3\n"), "cannot parse as CSV")
    assert "line 3" in msg


def test_extra_field_in_first_row_is_not_silently_dropped(tmp_path):
    # pandas would otherwise turn the first field into the index (or truncate the row)
    assert_data_error(write(tmp_path / "d.csv", "text,label\na,1,extra\n"), "cannot parse as CSV")


def test_unclosed_quote_is_a_parse_error(tmp_path):
    assert_data_error(write(tmp_path / "d.csv", 'text,label\n"never closed,1\n'), "cannot parse")


def test_missing_text_column(tmp_path):
    msg = assert_data_error(write(tmp_path / "d.csv", "body,label\na,1\n"), "text column 'text' not found")
    assert "['body', 'label']" in msg


def test_missing_label_column(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a"], "target": [1]}).to_parquet(p)
    msg = assert_data_error(p, "label column 'label' not found")
    assert "['text', 'target']" in msg


def test_truncated_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    pd.DataFrame({"text": ["a"] * 50, "label": [1] * 50}).to_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_data_error(bad, "not a readable Parquet file")


def test_non_string_text_column_in_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": [1, 2], "label": [0, 1]}).to_parquet(p)
    assert_data_error(p, "expected strings")


# --------------------------------------------------------------------------- labels


def test_label_map_declared_order_wins():
    lm = LabelMap.from_labels(["pos", "neg"], pd.Series(["neg", "pos"]))
    assert lm.names == ["pos", "neg"]
    assert lm.label2id == {"pos": 0, "neg": 1} and lm.id2label == {0: "pos", 1: "neg"}


def test_label_map_inferred_sort_is_numeric_for_ints():
    assert LabelMap.from_labels(None, pd.Series([10, 2, 1, 2])).names == ["1", "2", "10"]
    assert LabelMap.from_labels(None, pd.Series(["b", "a", None, "b"])).names == ["a", "b"]


def test_label_map_needs_two_labels():
    with pytest.raises(DataError, match="1 distinct"):
        LabelMap.from_labels(None, pd.Series([1, 1]))
    with pytest.raises(DataError, match="distinct"):
        LabelMap(["a", "a"])


def test_encode_compares_by_str():
    lm = LabelMap.from_labels(["0", "1"], pd.Series([0, 1]))
    codes = lm.encode(pd.Series([1, 0, 1]))
    assert codes.dtype == np.int64 and codes.tolist() == [1, 0, 1]
    assert LabelMap([0, 1]).encode(["1", "0"]).tolist() == [1, 0]


def test_encode_names_offending_rows():
    lm = LabelMap(["neg", "pos"])
    values = ["neg", "meh", "pos", None] + ["bad"] * 6
    with pytest.raises(DataError) as info:
        lm.encode(pd.Series(values), source="train.csv")
    msg = str(info.value)
    assert msg.startswith("train.csv: 8 label(s) not in the label map")
    assert "row 2: 'meh'" in msg and "row 4: null" in msg and "row 7: 'bad'" in msg
    assert "row 8" not in msg and "(and 3 more)" in msg


def test_label_map_json_round_trip():
    lm = LabelMap([0, "x"])
    assert lm.to_json() == {"labels": ["0", "x"]}
    assert LabelMap.from_json(lm.to_json()) == lm
    with pytest.raises(DataError, match="labels"):
        LabelMap.from_json(["a", "b"])


# --------------------------------------------------------------------------- splits


def test_split_round_trip(tmp_path):
    path = tmp_path / "nested" / "train.parquet"
    save_split(pd.DataFrame({"text": ["a", "b c"], "label": np.array([1, 0])}), path)
    ds = load_split(path)
    assert ds.texts == ["a", "b c"] and ds.labels.tolist() == [1, 0]
    assert ds.labels.dtype == np.int64 and len(ds) == 2
    save_split(TextDataset(["z"], np.array([2])), path)  # overwrite in place
    assert load_split(path).texts == ["z"]
    assert [p.name for p in path.parent.iterdir()] == ["train.parquet"]  # no temp left behind


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    save_split(TextDataset(["old"], [0]), path)

    def crash(table, where, *a, **k):
        Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        save_split(TextDataset(["new"], [1]), path)
    monkeypatch.undo()
    assert load_split(path).texts == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]


def test_save_split_refuses_raw_labels(tmp_path):
    with pytest.raises(DataError, match="LabelMap.encode"):
        save_split(pd.DataFrame({"text": ["a"], "label": ["pos"]}), tmp_path / "s.parquet")
    assert not (tmp_path / "s.parquet").exists()


def test_load_split_checks_schema(tmp_path):
    p = tmp_path / "s.parquet"
    pd.DataFrame({"text": ["a"], "label": ["pos"]}).to_parquet(p)
    with pytest.raises(DataError, match="int class indices"):
        load_split(p)
    with pytest.raises(DataError, match="file not found"):
        load_split(tmp_path / "missing.parquet")


def test_text_dataset_length_mismatch():
    with pytest.raises(ValueError, match="2 texts"):
        TextDataset(["a", "b"], np.array([0]))


# --------------------------------------------------------------------------- the validated directory


def validated(tmp_path):
    src = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    ev = write(tmp_path / "eval.csv", "text,label\nc,pos\n")
    out = tmp_path / "validated"
    splits = {"train": TextDataset(["a", "b"], [1, 0]), "eval": TextDataset(["c"], [1])}
    sources = {n: {"path": f.name, "md5": read_source(f, "text", "label").md5} for n, f in (("train", src), ("eval", ev))}
    manifest = write_validated(out, splits, LabelMap(["neg", "pos"]), sources)
    return out, src, manifest


def test_validated_dir_is_checked_against_its_sources(tmp_path):
    out, src, manifest = validated(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["eval.parquet", "labels.json", "manifest.json", "train.parquet"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    assert check_validated(out, tmp_path) == manifest
    src.write_text("text,label\na,pos\nb,pos\n")  # the data changed after validation
    with pytest.raises(DataError, match=r"^train.csv: changed since it was validated \(train split: md5 [0-9a-f]{32} "
                                        r"when validated, [0-9a-f]{32} now\)"):
        check_validated(out, tmp_path)


def test_validated_split_edited_by_hand_is_refused(tmp_path):
    out, _, _ = validated(tmp_path)
    save_split(TextDataset(["x"], [0]), out / "eval.parquet")
    with pytest.raises(DataError, match="eval.parquet: differs from what the validate stage wrote"):
        check_validated(out, tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json: not found"):
        check_validated(out, tmp_path)


def test_rewriting_the_validated_dir_swaps_it_whole(tmp_path):
    out, src, _ = validated(tmp_path)
    write_validated(out, {"train": TextDataset(["z"], [0])}, LabelMap(["neg", "pos"]),
                    {"train": {"path": src.name, "md5": read_source(src, "text", "label").md5}})
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "manifest.json", "train.parquet"]  # no old eval
