"""Sentence pairs, long-text truncation and label spellings: units on hand-checked examples, the
validation suite on pairs, and the teacher's length limit through the real stages."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from distillery.config import ConfigError, params_from_dict
from distillery.data import DataError, LabelMap, TextDataset, load_split, read_source, save_split
from distillery.encoding import encode_batch, kept_positions, max_input_length, split_budget
from tests.helpers import make_project, run_stage, tiny_params

WORDS = "one two three four five six seven eight nine ten a b c".split()


@pytest.fixture(scope="module")
def word_tokenizer() -> Tokenizer:
    """Word-level BERT-style tokenizer: id = position in [PAD, UNK, CLS, SEP] + WORDS."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def words(tok: Tokenizer, ids: list[int]) -> list[str]:
    return [tok.id_to_token(i) for i in ids]


# --------------------------------------------------------------------------- truncation


def test_head_and_head_tail_on_a_single_text(word_tokenizer):
    text = "one two three four five six seven eight nine ten"
    (head,), _ = encode_batch(word_tokenizer, [text], 8, "head")
    (both,), _ = encode_batch(word_tokenizer, [text], 8, "head_tail")
    # 8 tokens = [CLS] + 6 words + [SEP]; head_tail keeps ceil(6/4) = 2 first and 4 last words.
    assert words(word_tokenizer, head) == ["[CLS]", "one", "two", "three", "four", "five", "six", "[SEP]"]
    assert words(word_tokenizer, both) == ["[CLS]", "one", "two", "seven", "eight", "nine", "ten", "[SEP]"]
    (short,), _ = encode_batch(word_tokenizer, ["a b"], 8, "head_tail")
    assert words(word_tokenizer, short) == ["[CLS]", "a", "b", "[SEP]"]  # nothing to cut


def test_pairs_share_the_budget_longest_first_and_keep_segment_ids(word_tokenizer):
    pair = ("one two three four five six seven eight", "a b")
    (ids,), (types,) = encode_batch(word_tokenizer, [pair], 9, "head_tail")
    # 9 - 3 special = 6: the short side keeps both words, the long side 4 (1 head + 3 tail).
    assert words(word_tokenizer, ids) == ["[CLS]", "one", "six", "seven", "eight", "[SEP]", "a", "b", "[SEP]"]
    assert types == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    (ids,), _ = encode_batch(word_tokenizer, [pair], 9, "head")
    assert words(word_tokenizer, ids) == ["[CLS]", "one", "two", "three", "four", "[SEP]", "a", "b", "[SEP]"]


def test_budget_split_and_kept_positions_by_hand():
    assert split_budget(3, 20, 15) == (3, 12) and split_budget(20, 3, 15) == (12, 3)
    assert split_budget(10, 10, 15) == (8, 7) and split_budget(2, 2, 15) == (2, 2)
    assert kept_positions(10, 4, "head") == [0, 1, 2, 3]
    assert kept_positions(10, 4, "head_tail") == [0, 7, 8, 9]
    assert kept_positions(512, 510, "head_tail")[:128] == list(range(128))  # Sun et al.'s 128 + 382


def test_max_input_length_reads_the_position_table_less_offsets():
    class Cfg:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    assert max_input_length(Cfg(model_type="bert", max_position_embeddings=512)) == 512
    assert max_input_length(Cfg(model_type="roberta", max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_input_length(Cfg(model_type="modernbert", max_position_embeddings=8192)) == 8192


def test_segment_ids_derived_in_the_exported_graph_match_the_tokenizer(word_tokenizer):
    from distillery.quantization import _LogitsOnly

    captured = {}

    class Probe(torch.nn.Module):
        config = type("C", (), {"model_type": "bert", "type_vocab_size": 2})()

        def forward(self, **kw):
            captured.update(kw)
            return type("O", (), {"logits": kw["input_ids"].float()})()

    ids, types = encode_batch(word_tokenizer, [("one two", "three"), ("a", "b c")], 16)
    width = max(map(len, ids))
    batch = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    _LogitsOnly(Probe(), sep_token_id=3)(batch, mask)
    assert captured["token_type_ids"].tolist() == [t + [0] * (width - len(t)) for t in types]


# --------------------------------------------------------------------------- label files


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_bom_extra_columns_quotes_and_label_spellings_across_train_and_eval(tmp_path):
    train = write(tmp_path / "train.tsv", "\ufeffQuality\t#1 ID\t#1 String\t#2 String\n"
                  "1\t7\tHe said \"yes\"\tHe agreed\n0\t8\tIt's red\tIt's blue\n 1 \t9\tx\ty\n")
    eval_ = write(tmp_path / "eval.csv", "id,label,a,b,unused\n1,1.0,p,q,z\n2,0.0,r,s,z\n3,+1,t,u,z\n")
    tr = read_source(train, "#1 String", "Quality", "#2 String").frame
    ev = read_source(eval_, "a", "label", "b").frame
    assert list(tr.columns) == ["text", "text_pair", "label"]
    assert tr["text"][0] == 'He said "yes"' and tr["text_pair"][1] == "It's blue"
    labels = LabelMap.from_labels(None, tr["label"])
    assert labels.names == ["0", "1"]  # never ['0', '0.0', '1', '1.0']
    assert labels.encode(tr["label"]).tolist() == [1, 0, 1]
    assert labels.encode(ev["label"]).tolist() == [1, 0, 1]
    assert LabelMap.from_labels([" 0 ", "1.0"], tr["label"]).names == ["0", "1"]  # declared, spelt loosely


def test_string_labels_lose_whitespace_and_bad_labels_are_named(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\na, pos\nb,neg \nc,pos\n")
    assert read_source(f, "text", "label").frame["label"].tolist() == ["pos", "neg", "pos"]
    with pytest.raises(DataError, match=r"d2\.csv: text pair column 'b' not found"):
        read_source(write(tmp_path / "d2.csv", "text,label\na,1\n"), "text", "label", "b")
    with pytest.raises(DataError, match=r"label column 'label'.*'007'.*row 2"):
        read_source(write(tmp_path / "d3.csv", "text,label\na,7\nb,007\n"), "text", "label")


def test_pair_split_round_trips(tmp_path):
    ds = TextDataset(["a", "b"], [0, 1], ["c", "d"])
    back = load_split(save_split(ds, tmp_path / "s.parquet"))
    assert back.inputs == [("a", "c"), ("b", "d")] and back.labels.tolist() == [0, 1]
    assert load_split(save_split(TextDataset(["a"], [1]), tmp_path / "t.parquet")).inputs == ["a"]


# --------------------------------------------------------------------------- config and validation


def test_bilstm_on_pairs_and_clashing_columns_are_refused_naming_the_keys():
    raw = tiny_params(student={"architecture": "bilstm"})
    raw["data"]["text_pair_column"] = "second"
    with pytest.raises(ConfigError, match=r"bilstm does not support sentence pairs.*data\.text_pair_column"):
        params_from_dict(raw)
    raw = tiny_params()
    raw["data"]["text_pair_column"] = raw["data"]["text_column"]
    with pytest.raises(ConfigError, match="text_pair_column"):
        params_from_dict(raw)
    raw = tiny_params()
    raw["data"]["truncation"] = "middle"
    with pytest.raises(ConfigError, match=r"data\.truncation"):
        params_from_dict(raw)


def test_validation_checks_the_second_text_and_leakage_on_the_pair():
    from distillery.validation import LEAKAGE, TEXT_NOT_BLANK, SuiteRunner, row_keys

    raw = tiny_params()
    raw["data"]["text_pair_column"] = "second"
    p = params_from_dict(raw)
    cfg = p.validate_.model_copy(update={"suite": p.validate_.suite.model_copy(
        update={"row_count": None, "min_class_rows": None, "max_class_share": None})})
    train = pd.DataFrame({"text": ["a", "b", "c", "d"], "text_pair": ["x", "y", "z", "w"], "label": [0, 1, 0, 1]})
    # Eval repeats train's first texts with new second texts (no leak), one whole pair (a leak),
    # and has one blank second text.
    eval_ = pd.DataFrame({"text": ["a", "b", "c", "e"], "text_pair": ["new", "other", "z", " "], "label": [0, 1, 0, 1]})
    res = SuiteRunner().validate(eval_, "eval", "eval.csv", p.data, cfg, ["0", "1"], row_keys(train))
    by = {f.expectation: f for f in res.failures}
    assert by[TEXT_NOT_BLANK].column == "second" and [s["row"] for s in by[TEXT_NOT_BLANK].sample_rows] == [4]
    assert by[LEAKAGE].unexpected_count == 1 and by[LEAKAGE].sample_rows[0]["text_pair"] == "z"


def test_max_length_above_the_teachers_limit_stops_the_teacher_stage(tmp_path):
    from distillery.demo_data import make_demo_dataset

    params = tiny_params()
    params["data"]["max_length"] = 200  # the tiny teacher has 128 positions
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path / "p", params, [*train.text, *eval_.text], layers=1)
    run_stage(root, "demo_data")
    run_stage(root, "validate")
    with pytest.raises(ConfigError, match=r"data\.max_length: 200 .*\(128, .*data\.max_length <= 128"):
        run_stage(root, "teacher")


def test_mrpc_targets_use_the_positive_class_f1():
    from bench.report import evaluate_targets, positive_f1

    # gold 1: 6 rows, 4 predicted 1; gold 0: 4 rows, 1 predicted 1 -> P = 4/5, R = 4/6, F1 = 8/11
    assert positive_f1([[3, 1], [2, 4]], 1) == pytest.approx(8 / 11)
    row = {"f1_positive": 0.8, "size_mb": 100.0, "latency_p50_ms": 10.0}
    rows = {"A": row, "B": {**row, "size_mb": 25.0, "latency_p50_ms": 5.0}, "D": {**row, "f1_positive": 0.7},
            "E-quantize": {"f1_positive": 0.78, "size_mb": 5.0, "latency_p50_ms": 2.0}}
    got = {t["name"]: t for t in evaluate_targets(rows, {}, "mrpc")}
    assert got["f1_retention_vs_A"]["value"] == pytest.approx(0.975) and got["f1_retention_vs_A"]["met"]
    assert got["size_x_smaller_vs_B"]["value"] == pytest.approx(5.0) and got["p50_x_lower_vs_B"]["met"]
    assert got["f1_pts_vs_D"]["value"] == pytest.approx(8.0)
