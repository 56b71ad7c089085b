"""Unit tests for distillery.validation: the GX suite built from params and its report."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from distillery.config import Bounds, DataConfig, SuiteConfig, ValidateConfig
from distillery.data import read_table
from distillery.validation import (CLASS_BALANCE, CLASS_ROWS_MIN, CLASSES_PRESENT, DUPLICATES, LABEL_IN_SET, LABEL_MAP,
                                   LABEL_NOT_NULL, LEAKAGE, REQUIRED_COLUMN, ROW_COUNT, TEXT_LENGTH, TEXT_NOT_BLANK,
                                   TEXT_NOT_NULL, SuiteRunner, ValidationFailed, build_expectations, format_failures,
                                   summary_markdown, teacher_label_failure, unreadable)

# User column names differ from the internal text/label so messages can be checked for them.
DATA = DataConfig(train_path="train.csv", eval_path="eval.csv", text_column="review",
                  label_column="sentiment", labels=["neg", "pos"])
VCFG = ValidateConfig(sample_rows=3, suite=SuiteConfig(
    row_count=Bounds(min=20, max=1000), text_length=Bounds(min=1, max=50), max_class_share=0.8, min_class_rows=5,
    max_leakage_share=0.1, max_duplicate_share=0.1))
LABELS = ["neg", "pos"]


def clean(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i}" for i in range(n)],
                         "label": ["neg", "pos"] * (n // 2)})


def run(df, labels=LABELS, vcfg=VCFG, data=DATA):
    return SuiteRunner().validate(df, "train", "data/train.csv", data, vcfg, labels)


def only_failure(result, check):
    assert not result.success
    found = [f for f in result.failures if f.expectation == check]
    assert len(found) == 1, [f.expectation for f in result.failures]
    return found[0]


def rows_of(failure):
    return [s["row"] for s in failure.sample_rows]


def test_clean_data_passes():
    result = run(clean())
    assert result.success and result.failures == []
    assert result.rows == 40
    report = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON
    assert report["gx_result"]["success"] is True
    assert len(report["gx_result"]["expectations"]) == len(build_expectations(DATA, VCFG, LABELS))


def test_int_labels_match_declared_strings():
    df = clean().assign(label=[0, 1] * 20)
    assert run(df, labels=["0", "1"]).success
    assert run(df, labels=[0, 1]).success


def test_null_text():
    df = clean()
    df.loc[[4, 9], "text"] = None
    f = only_failure(run(df), TEXT_NOT_NULL)
    assert f.column == "review" and f.unexpected_count == 2
    assert rows_of(f) == [5, 10]
    assert [f.expectation for f in run(df).failures] == [TEXT_NOT_NULL]  # nulls are reported once


def test_empty_and_whitespace_text():
    df = clean()
    df.loc[2, "text"] = "   \t"
    df.loc[6, "text"] = "\u00a0"
    f = only_failure(run(df), TEXT_NOT_BLANK)
    assert f.column == "review" and rows_of(f) == [3, 7]
    assert f.sample_rows[0]["text"] == "   \t" and f.sample_rows[0]["label"] == "neg"


def test_label_outside_declared_set():
    df = clean()
    df.loc[7, "label"] = "meh"
    f = only_failure(run(df), LABEL_IN_SET)
    assert f.column == "sentiment" and f.unexpected_count == 1
    assert f.sample_rows == [{"row": 8, "text": "review number 7", "label": "meh"}]
    assert "'meh'" in f.details


def test_label_set_not_checked_when_labels_inferred():
    df = clean()
    df.loc[7, "label"] = "meh"
    no_min = VCFG.model_copy(update={"suite": VCFG.suite.model_copy(update={"min_class_rows": None})})
    assert run(df, labels=None, vcfg=no_min).success
    assert only_failure(run(df, labels=None), CLASS_ROWS_MIN).details.startswith("class(es) with fewer than 5 rows: {'meh': 1}")
    # without a label map there is no set to check against: labels in set and every class present
    assert len(build_expectations(DATA, VCFG, None)) == len(build_expectations(DATA, VCFG, LABELS)) - 2


def test_null_label():
    df = clean()
    df.loc[0, "label"] = None
    f = only_failure(run(df), LABEL_NOT_NULL)
    assert f.column == "sentiment" and rows_of(f) == [1]


def test_too_long_text_truncated_in_sample():
    df = clean()
    df.loc[11, "text"] = "x" * 200
    f = only_failure(run(df), TEXT_LENGTH)
    assert rows_of(f) == [12]
    assert "1..50" in f.details
    assert len(f.sample_rows[0]["text"]) == 80 and f.sample_rows[0]["text"].endswith("...")


def test_too_few_rows():
    f = only_failure(run(clean(10)), ROW_COUNT)
    assert "10 rows" in f.details and "between 20 and 1000" in f.details


def test_one_class_over_max_share():
    df = clean(40).assign(label=["pos"] * 34 + ["neg"] * 6)  # 85% > 80%
    f = only_failure(run(df), CLASS_BALANCE)
    assert f.column == "sentiment"
    assert "'pos'" in f.details and "34 of 40" in f.details and "85.0%" in f.details
    assert run(clean(40).assign(label=["pos"] * 32 + ["neg"] * 8)).success  # exactly 80% is allowed


def test_samples_capped_but_count_complete():
    df = clean()
    df.loc[[1, 3, 5, 7, 9], "text"] = None
    f = only_failure(run(df), TEXT_NOT_NULL)
    assert f.unexpected_count == 5 and rows_of(f) == [2, 4, 6]


def test_row_numbers_ignore_the_frames_own_index():
    df = clean().set_index(pd.Index(range(100, 140)))
    df.loc[105, "text"] = None
    assert rows_of(only_failure(run(df), TEXT_NOT_NULL)) == [6]


def test_missing_column_reported_once_with_user_name():
    df = clean().rename(columns={"label": "y"})
    result = run(df)
    assert [f.expectation for f in result.failures] == [REQUIRED_COLUMN]
    assert result.failures[0].column == "sentiment"
    assert "['text', 'y']" in result.failures[0].details


def test_format_failures_and_exception(tmp_path):
    df = clean()
    df.loc[4, "text"] = None
    df.loc[7, "label"] = "meh"
    bad, good = run(df), SuiteRunner().validate(clean(), "eval", "data/eval.csv", DATA, VCFG, LABELS)
    text = format_failures([bad, good])
    assert "2 check(s) in 1 of 2 split(s)" in text
    assert "data/train.csv (split 'train', 40 rows)" in text
    assert "text not null [column 'review']: 1 of 40 rows" in text
    assert "row 5:" in text and "row 8: label='meh'" in text
    assert "data/eval.csv" not in text
    exc = ValidationFailed([bad, good])
    assert str(exc) == text and exc.results[0] is bad


def test_real_file_through_read_table(tmp_path):
    p = tmp_path / "train.csv"
    lines = ["review,sentiment"] + [f"text {i},{'pos' if i % 2 else 'neg'}" for i in range(30)]
    lines[4] = ",pos"  # data row 4 has an empty text
    p.write_text("\n".join(lines) + "\n")
    f = only_failure(run(read_table(p, "review", "sentiment")), TEXT_NOT_NULL)
    assert rows_of(f) == [4]


def test_3000_rows_validate_quickly():
    df = clean(3000)
    vcfg = VCFG.model_copy(update={"suite": VCFG.suite.model_copy(update={"row_count": Bounds(min=1, max=10_000)})})
    run(df, vcfg=vcfg)  # first call pays for GX's import
    start = time.perf_counter()
    assert run(df, vcfg=vcfg).success
    # measured about 0.15 s; a loose bound that still catches e.g. COMPLETE results on big data
    assert time.perf_counter() - start < 3.0


@pytest.mark.sst2
def test_sst2_dev_passes(sst2_dir):
    data = DataConfig(train_path="train.tsv", eval_path="dev.tsv", text_column="sentence", labels=[0, 1])
    df = read_table(sst2_dir / "dev.tsv", "sentence", "label")
    result = SuiteRunner().validate(df, "eval", str(sst2_dir / "dev.tsv"), data, ValidateConfig(), [0, 1])
    assert result.success, format_failures([result])


def test_no_progress_bars(capfd):
    run(clean())
    err = capfd.readouterr().err
    assert "Calculating Metrics" not in err and "it/s" not in err


# --------------------------------------------------------------------------- checks beyond one column


def test_eval_lacking_a_class_fails_label_agreement():
    df = clean().assign(label=["neg"] * 40)
    vcfg = VCFG.model_copy(update={"suite": VCFG.suite.model_copy(update={"max_class_share": None})})
    f = only_failure(run(df, vcfg=vcfg), CLASSES_PRESENT)
    assert f.column == "sentiment" and "['pos']" in f.details and "{'neg': 40}" in f.details


def test_too_few_rows_of_a_class_names_the_class():
    df = clean().assign(label=["neg"] * 37 + ["pos"] * 3)
    vcfg = VCFG.model_copy(update={"suite": VCFG.suite.model_copy(update={"max_class_share": None})})
    f = only_failure(run(df, vcfg=vcfg), CLASS_ROWS_MIN)
    assert "fewer than 5 rows: {'pos': 3}" in f.details
    assert rows_of(f) == [38, 39, 40]


def test_duplicates_above_threshold_only_warn():
    df = clean()
    df.loc[[10, 11, 12], "text"] = "same words"  # 3 of 40 rows share a text: 7.5% <= 10%
    assert run(df).success and run(df).warnings == []
    df.loc[[13, 14], "text"] = "same words"      # 5 of 40: 12.5% > 10%
    result = run(df)
    assert result.success and result.failures == []
    [w] = result.warnings
    assert w.expectation == DUPLICATES and w.severity == "warning" and w.unexpected_count == 5
    assert "5 of 40 rows (12.5%)" in w.details and rows_of(w) == [11, 12, 13]


def test_leakage_above_threshold_fails_on_eval():
    train, eval_ = clean(), clean().assign(text=[f"eval review {i}" for i in range(40)])
    eval_.loc[[3, 8, 20, 33, 39], "text"] = train["text"][[0, 1, 2, 3, 4]].values  # 12.5% > 10%
    result = SuiteRunner().validate(eval_, "eval", "data/eval.csv", DATA, VCFG, LABELS, train_texts=train["text"])
    f = only_failure(result, LEAKAGE)
    assert f.column == "review" and "5 of 40 rows (12.5%) have a text that is also in train" in f.details
    assert rows_of(f) == [4, 9, 21]
    ok = eval_.copy()
    ok.loc[[20, 33, 39], "text"] = ["fresh a", "fresh b", "fresh c"]  # 2 of 40 = 5%
    assert SuiteRunner().validate(ok, "eval", "e.csv", DATA, VCFG, LABELS, train_texts=train["text"]).success


@pytest.mark.parametrize("teacher,finetune,needle", [
    (None, "auto", None),                                   # no head: a new one is trained
    (["neg", "pos"], "auto", None),                          # the same head
    (["LABEL_0", "LABEL_1"], "auto", None),                  # an unnamed 2-class head
    (["LABEL_0", "LABEL_1", "LABEL_2"], "auto", "a 3-class head cannot serve 2 classes"),
    (["pos", "neg"], "auto", "declare data.labels: ['pos', 'neg']"),
    (["bad", "good"], "auto", "they disagree"),
    (["bad", "good"], True, None),                           # finetune: true retrains the head on purpose
])
def test_label_map_against_teacher_head(teacher, finetune, needle):
    f = teacher_label_failure(["neg", "pos"], teacher, "my-teacher", finetune)
    if needle is None:
        assert f is None
    else:
        assert f.expectation == LABEL_MAP and needle in f.details and "'my-teacher'" in f.details


def test_unreadable_split_in_the_report():
    r = unreadable("train", "in/train.csv", "in/train.csv: file is empty")
    assert not r.success and r.rows is None
    text = format_failures([r])
    assert "in/train.csv (split 'train'):" in text and "- file readable: file is empty" in text


def test_data_docs_open_as_html_and_show_the_failure(tmp_path):
    from html.parser import HTMLParser

    df = clean()
    df.loc[4, "text"] = None
    runner = SuiteRunner(tmp_path / "docs")
    bad = runner.validate(df, "train", "data/train.csv", DATA, VCFG, LABELS)
    good = runner.validate(clean().assign(text=[f"eval {i}" for i in range(40)]), "eval", "data/eval.csv",
                           DATA, VCFG, LABELS, train_texts=df["text"])
    assert not bad.success and good.success
    index = runner.build_docs()

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    pages = sorted((index.parent / "validations").rglob("*.html"))
    assert [p.parts[-4] for p in pages] == ["distillery_eval", "distillery_train"]  # one page per split
    for page in [index, *pages]:
        parser = Tags()
        parser.feed(page.read_text())
        assert {"html", "body", "table"} <= set(parser.tags), page
        if page != index:
            assert page.relative_to(index.parent).as_posix() in index.read_text()  # linked from the index
    train_page = pages[1].read_text()
    assert "text not null: no row has an empty 'review' cell" in train_page  # our description, rendered
    assert "Failed" in train_page
    size = sum(p.stat().st_size for p in index.parent.rglob("*") if p.is_file())
    assert size < 500_000  # GX's unused images and fonts are not kept


def test_summary_markdown_lists_failures_warnings_and_rows():
    df = clean()
    df.loc[4, "text"] = None
    df.loc[[10, 11, 12, 13, 14], "text"] = "same words"
    result = run(df)
    md = summary_markdown({"success": False, "results": [result.to_dict()]},
                          {"status": "skipped", "reason": "no champion yet"}, "reports/validation/index.html")
    assert md.startswith("# Data validation: FAILED")
    assert "| train | `data/train.csv` | 40 | 1 | 1 |" in md
    assert "**Failed: text not null** (column `review`)" in md and "- row 5:" in md
    assert "**Warning: few duplicate texts**" in md
    assert "no champion yet" in md and "reports/validation/index.html" in md


def test_report_shortens_huge_failing_values():
    df = clean()
    df.loc[3, "text"] = "y" * 1_000_000
    result = run(df)
    assert only_failure(result, TEXT_LENGTH).sample_rows[0]["text"].endswith("...")
    assert len(json.dumps(result.to_dict())) < 50_000
