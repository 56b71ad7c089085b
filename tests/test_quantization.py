"""ONNX export, int8 quantization and the torch-free OnnxClassifier, on tiny random BERTs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
from transformers.pytorch_utils import prune_linear_layer

from distillery.onnx_model import DEFAULT_MAX_LENGTH, OnnxClassifier
from distillery import quantization
from distillery.config import MeasureConfig, QuantizeConfig
from distillery.quant_select import (BuildInputs, build_and_select, build_variant, select_candidate,
                                     split_training_rows)
from distillery.quantization import (calibration_feeds, export_onnx, optimize_fp32_graph, quantize_dynamic_int8,
                                     quantize_static_int8)

OPSET = 18
MAX_LENGTH = 32
BIG_VOCAB = 2048
LABELS = ["positive", "negative", "neutral"]  # deliberately not alphabetical
MEASURE = MeasureConfig(latency_samples=5, warmup=1, throughput_batch_size=8)
# 5 specials + 26 letters + 65 syllables = 96 word pieces
WORDS = list("abcdefghijklmnopqrstuvwxyz") + [c + v for c in "bcdfghlmnprst" for v in "aeiou"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def tiny_bert(hidden: int, seed: int, vocab_size: int = len(VOCAB)) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=4 * hidden, max_position_embeddings=64, num_labels=len(LABELS),
                        # a wider init than BERT's 0.02, so logits vary with the input and
                        # argmax comparisons between fp32 and int8 are not coin flips
                        initializer_range=0.2)
    return BertForSequenceClassification(config).eval()


def sentences(n: int, seed: int, min_words: int = 1, max_words: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(min_words, max_words + 1)))
            for _ in range(n)]


def torch_logits(model, tokenizer, texts: list[str]) -> np.ndarray:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()


def run_session(path: Path, tokenizer, texts: list[str]) -> np.ndarray:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    return sess.run(["logits"], feeds)[0]


@pytest.fixture(scope="module")
def tokenizer():
    # BertTokenizerFast(vocab_file=...) silently ignores the file in transformers 5 (a
    # 5-token vocab, every word [UNK]); the vocab dict is the constructor argument now.
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)})
    assert tok("ba be x")["input_ids"] == [2, VOCAB.index("ba"), VOCAB.index("be"), VOCAB.index("x"), 3]
    return tok


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Hidden-32 model exported to fp32 ONNX."""
    model = tiny_bert(32, seed=0)
    attention = model.config._attn_implementation
    path = export_onnx(model, tmp_path_factory.mktemp("small") / "model.onnx", OPSET, MAX_LENGTH)
    return model, path, attention


@pytest.fixture(scope="module")
def model_dir(small, tokenizer, tmp_path_factory):
    """A self-contained serving directory around the hidden-32 model."""
    d = tmp_path_factory.mktemp("served")
    (d / "model.onnx").write_bytes(small[1].read_bytes())
    tokenizer.save_pretrained(d)
    (d / "labels.json").write_text(json.dumps({"labels": LABELS}))
    (d / "distillery.json").write_text(json.dumps({"max_length": MAX_LENGTH}))
    return d


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Hidden-64 model, fp32 and int8 (per-channel) ONNX. Its 2048-row embedding table (ids beyond
    VOCAB are never looked up) dominates the file, as the word embedding does in a small BERT."""
    model = tiny_bert(64, seed=1, vocab_size=BIG_VOCAB)
    d = tmp_path_factory.mktemp("medium")
    fp32 = export_onnx(model, d / "fp32.onnx", OPSET, MAX_LENGTH)
    return model, fp32, quantize_dynamic_int8(fp32, d / "int8.onnx", per_channel=True)


# --- export ---------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,min_words,max_words", [(1, 1, 1), (2, 3, 12), (7, 1, 40)])
def test_export_matches_torch_for_any_batch_and_length(small, tokenizer, batch, min_words, max_words):
    model, path, _ = small
    texts = sentences(batch, seed=batch, min_words=min_words, max_words=max_words)
    got, ref = run_session(path, tokenizer, texts), torch_logits(model, tokenizer, texts)
    assert got.shape == (batch, len(LABELS))
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_export_declares_dynamic_int64_inputs_and_is_self_contained(small):
    model, path, _ = small
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits"]
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == OPSET
    for inp in graph.input:
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = inp.type.tensor_type.shape.dim
        assert all(d.dim_param and not d.dim_value for d in dims), f"{inp.name} has a fixed dimension"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no external data, no temp file

def test_export_leaves_callers_model_as_it_was(small):
    model, _, attention_before = small
    assert attention_before != "eager"  # else the check below proves nothing
    assert model.config._attn_implementation == attention_before
    assert not model.training


def test_export_bakes_structurally_pruned_layers(tokenizer, tmp_path):
    """Layer 0 keeps 2 of 4 heads, layer 1 keeps 40 of 128 FFN neurons: shapes differ per layer."""
    model = tiny_bert(32, seed=2)
    attn = model.bert.encoder.layer[0].attention
    keep = torch.arange(16)  # heads 0 and 1 (head size 8)
    for name in ("query", "key", "value"):
        setattr(attn.self, name, prune_linear_layer(getattr(attn.self, name), keep))
    attn.output.dense = prune_linear_layer(attn.output.dense, keep, dim=1)
    layer1 = model.bert.encoder.layer[1]
    neurons = torch.arange(0, 128, 3)[:40]
    layer1.intermediate.dense = prune_linear_layer(layer1.intermediate.dense, neurons)
    layer1.output.dense = prune_linear_layer(layer1.output.dense, neurons, dim=1)

    path = export_onnx(model, tmp_path / "pruned.onnx", OPSET, MAX_LENGTH)
    texts = sentences(5, seed=3)
    np.testing.assert_allclose(run_session(path, tokenizer, texts), torch_logits(model, tokenizer, texts), atol=1e-4)
    shapes = {tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}
    assert (32, 16) in shapes and (32, 40) in shapes  # the pruned weights as they are (transposed)


def test_export_rejects_max_length_beyond_position_table(tmp_path):
    with pytest.raises(ValueError, match="max_length"):
        export_onnx(tiny_bert(32, seed=0), tmp_path / "m.onnx", OPSET, max_length=65)
    assert not any(tmp_path.iterdir())


# --- int8 -----------------------------------------------------------------------------------

def test_int8_is_smaller_with_int8_embeddings(medium):
    _, fp32, int8 = medium
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    # the word-embedding table is stored in 8 bits, not fp32
    tables = [t for t in onnx.load(str(int8)).graph.initializer if tuple(t.dims) == (BIG_VOCAB, 64)]
    assert tables and all(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in tables)


def test_int8_predictions_agree_with_fp32(medium, tokenizer):
    _, fp32, int8 = medium
    texts = sentences(64, seed=4)
    ref, got = run_session(fp32, tokenizer, texts), run_session(int8, tokenizer, texts)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    cosine = (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got)
    assert cosine > 0.99
    assert np.abs(ref - got).max() > 0  # it really is a different (quantized) graph


@pytest.mark.parametrize("content", [None, b"not an onnx model"])
def test_failed_quantization_leaves_no_file_and_keeps_old_output(tmp_path, content):
    src = tmp_path / "fp32.onnx"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out" / "int8.onnx"
    out.parent.mkdir()
    with pytest.raises(Exception):
        quantize_dynamic_int8(src, out, per_channel=True)
    assert not out.exists()
    out.write_bytes(b"previous good model")
    with pytest.raises(Exception):
        quantize_dynamic_int8(src, out, per_channel=True)
    assert out.read_bytes() == b"previous good model"
    assert sorted(p.name for p in out.parent.iterdir()) == ["int8.onnx"]  # no temp files left


def test_crash_midway_through_writing_leaves_old_output(medium, tmp_path, monkeypatch):
    """ORT writes its output and then fails: the half-written file must not replace ours."""
    def write_half_then_fail(model_input, model_output, **kwargs):
        Path(model_output).write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantization, "quantize_dynamic", write_half_then_fail)
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous good model")
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_dynamic_int8(medium[1], out, per_channel=True)
    assert out.read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def test_export_that_fails_its_parity_check_leaves_no_file(tmp_path, monkeypatch):
    def mismatch(*args, **kwargs):
        raise RuntimeError("ONNX logits differ")

    monkeypatch.setattr(quantization, "check_onnx_parity", mismatch)
    with pytest.raises(RuntimeError, match="differ"):
        export_onnx(tiny_bert(32, seed=0), tmp_path / "model.onnx", OPSET, MAX_LENGTH)
    assert not any(tmp_path.iterdir())


# --- fp32 graph optimization, static int8, 4-bit ---------------------------------------------

def test_fp32_optimization_fuses_and_keeps_logits(medium, tokenizer, tmp_path):
    _, fp32, _ = medium
    opt = optimize_fp32_graph(fp32, tmp_path / "opt.onnx", "ort_transformers")
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert "SkipLayerNormalization" in ops and "BiasGelu" in ops  # it really fused something
    assert len(ops) < len(onnx.load(str(fp32)).graph.node)
    for seed, batch in ((8, 1), (9, 6)):
        texts = sentences(batch, seed=seed)
        np.testing.assert_allclose(run_session(opt, tokenizer, texts), run_session(fp32, tokenizer, texts), atol=1e-4)
    same = optimize_fp32_graph(fp32, tmp_path / "none.onnx", "none")
    assert same.read_bytes() == fp32.read_bytes()


def calibration_ids(tokenizer, n: int = 24) -> list[list[int]]:
    return tokenizer(sentences(n, seed=10), truncation=True, max_length=MAX_LENGTH)["input_ids"]


def test_calibration_feeds_pad_to_one_length_only_when_asked():
    ids = [[2, 7, 3], [2, 3]]
    ragged = calibration_feeds(ids, pad_id=0, same_length=False)
    assert [f["input_ids"].shape for f in ragged] == [(1, 3), (1, 2)]
    padded = calibration_feeds(ids, pad_id=0, same_length=True)
    assert padded[1]["input_ids"].tolist() == [[2, 3, 0]] and padded[1]["attention_mask"].tolist() == [[1, 1, 0]]


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_static_int8_is_close_to_fp32(medium, tokenizer, tmp_path, method):
    """Percentile's histograms stack every calibration batch, so it also proves the padding works."""
    _, fp32, dynamic = medium
    feeds = calibration_feeds(calibration_ids(tokenizer), 0, same_length=method != "minmax")
    static = quantize_static_int8(fp32, tmp_path / "static.onnx", feeds, per_channel=True, calibration_method=method)
    ops = {n.op_type for n in onnx.load(str(static)).graph.node}
    assert "QLinearMatMul" in ops  # QOperator format: activations quantized with fixed scales
    assert static.stat().st_size < 0.4 * fp32.stat().st_size
    texts = sentences(64, seed=11)
    ref, got = run_session(fp32, tokenizer, texts), run_session(static, tokenizer, texts)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got) > 0.99
    # fixed activation scales: a text's logits do not depend on its batch mates
    alone = run_session(static, tokenizer, texts[:1])
    np.testing.assert_allclose(alone[0], run_session(static, tokenizer, texts[:1] + [texts[5]])[0], atol=1e-5)


def _inputs(tokenizer, method="minmax", block=32):
    return BuildInputs(per_channel=True, int4_block_size=block, calibration_method=method,
                       calibration_ids=calibration_ids(tokenizer), pad_id=0)


def test_int4_embeddings_halve_the_table_and_keep_logits(medium, tokenizer, tmp_path):
    big_vocab = medium[1]
    int8 = build_variant("dynamic_int8", big_vocab, tmp_path / "int8.onnx", _inputs(tokenizer))
    int4 = build_variant("int4_embeddings", big_vocab, tmp_path / "int4.onnx", _inputs(tokenizer))
    table = BIG_VOCAB * 64  # word-embedding values: 1 byte each in int8, half a byte + a scale per 32 in int4
    assert int4.stat().st_size < int8.stat().st_size - 0.3 * table
    proto = onnx.load(str(int4))
    assert "GatherBlockQuantized" in {n.op_type for n in proto.graph.node}
    assert any(t.data_type == onnx.TensorProto.INT4 and tuple(t.dims) == (BIG_VOCAB, 64) for t in proto.graph.initializer)
    texts = sentences(64, seed=12)
    ref, got = run_session(big_vocab, tokenizer, texts), run_session(int4, tokenizer, texts)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got) > 0.98  # 4 bits: looser than int8's 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int4.onnx", "int8.onnx"]  # no intermediate left


def test_int4_weights_build_and_stay_close(medium, tokenizer, tmp_path):
    _, fp32, _ = medium
    int4 = build_variant("int4_weights", fp32, tmp_path / "w4.onnx", _inputs(tokenizer))
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(int4)).graph.node}
    texts = sentences(64, seed=13)
    ref, got = run_session(fp32, tokenizer, texts), run_session(int4, tokenizer, texts)
    # 4-bit MatMul weights are lossy on random weights (cosine ~0.8, agreement ~0.95 here; 0.98
    # agreement on the real 2-layer MiniLM), so this checks "still the same model", not "close"
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.85
    assert (ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got) > 0.7


# --- choosing a variant -------------------------------------------------------------------------

def cand(name, mb, p50, drop):
    return {"name": name, "size_bytes": int(mb * 1e6), "latency_p50_ms": p50, "accuracy_drop": drop}


def test_selector_picks_smallest_within_limit_and_rejects_smaller_over_it():
    figures = [cand("dynamic_int8", 15.7, 0.6, 0.001), cand("int4_embeddings", 11.3, 0.7, 0.004),
               cand("int4_weights", 10.3, 1.1, 0.02), cand("fp32", 62.5, 3.5, 0.0)]
    d = select_candidate(figures, max_accuracy_drop=0.005)
    assert d["chosen"] == "int4_embeddings" and d["within_limit"]
    assert d["verdicts"]["int4_weights"].startswith("accuracy drop 0.0200 > max_accuracy_drop 0.005")
    assert d["verdicts"]["dynamic_int8"].startswith("larger")
    # a drop exactly at the limit passes; a tighter limit moves the choice to the next smallest
    assert select_candidate(figures, max_accuracy_drop=0.004)["chosen"] == "int4_embeddings"
    assert select_candidate(figures, max_accuracy_drop=0.003)["chosen"] == "dynamic_int8"
    # a negative drop (the quantized model happens to be more accurate) is within any limit
    assert select_candidate([cand("a", 2, 1, -0.01), cand("b", 3, 1, 0.0)], 0.0)["chosen"] == "a"


def test_selector_breaks_size_ties_by_latency():
    figures = [cand("static_int8", 16.00, 0.9, 0.0), cand("dynamic_int8", 16.10, 0.6, 0.0), cand("x", 16.5, 0.1, 0.0)]
    d = select_candidate(figures, max_accuracy_drop=0.005)
    assert d["chosen"] == "dynamic_int8"  # within 1% of the smallest and faster; x is 3% larger
    assert "slower" in d["verdicts"]["static_int8"]


def test_selector_falls_back_to_smallest_drop_and_reports_failures():
    figures = [cand("int4_weights", 10, 1.0, 0.03), cand("dynamic_int8", 16, 0.6, 0.01),
               {"name": "static_int8", "error": "RuntimeError: calibration failed"}]
    d = select_candidate(figures, max_accuracy_drop=0.005)
    assert d["chosen"] == "dynamic_int8" and not d["within_limit"]
    assert "no candidate within max_accuracy_drop 0.005" in d["reason"]
    assert d["verdicts"]["static_int8"] == "failed to build: RuntimeError: calibration failed"
    with pytest.raises(RuntimeError, match="static_int8: boom"):
        select_candidate([{"name": "static_int8", "error": "boom"}], 0.005)


def test_training_rows_for_calibration_and_selection_are_disjoint_when_possible():
    calib, sel = split_training_rows(1000, 100, 500, seed=0)
    assert len(calib) == 100 and len(sel) == 500 and not set(calib) & set(sel)
    calib2, sel2 = split_training_rows(1000, 100, 500, seed=0)
    assert (calib == calib2).all() and (sel == sel2).all()  # seeded
    calib, sel = split_training_rows(30, 100, 20, seed=0)  # a tiny split: everything, overlapping
    assert len(calib) == 30 and len(sel) == 20


def test_build_and_select_keeps_one_directory_and_reports_every_candidate(medium, tokenizer, tmp_path):
    big_vocab = medium[1]
    def package(d):
        tokenizer.save_pretrained(d)
        (d / "labels.json").write_text(json.dumps({"labels": LABELS}))

    texts = sentences(40, seed=14)
    gold = run_session(big_vocab, tokenizer, texts).argmax(1)  # fp32 is right on every row
    q = QuantizeConfig(method="onnx_select", candidates=["fp32", "dynamic_int8", "int4_embeddings", "static_int8"],
                       max_accuracy_drop=0.5)
    chosen, report = build_and_select(
        big_vocab, tmp_path / "work", q, _inputs(tokenizer), package=package,
        load=lambda d: OnnxClassifier.from_dir(d, threads=1), selection=(texts, gold),
        measure=MEASURE)
    assert report["variant"] == "int4_embeddings" and chosen.name == "int4_embeddings" and report["within_limit"]
    assert report["fp32_selection_accuracy"] == 1.0
    rows = {c["name"]: c for c in report["candidates"]}
    assert set(rows) == set(q.candidates)
    assert rows["fp32"]["accuracy_drop"] == 0.0 and rows["fp32"]["agreement"] == 1.0
    assert all(r["size_bytes"] < rows["fp32"]["size_bytes"] for n, r in rows.items() if n != "fp32")
    assert rows["int4_embeddings"]["verdict"].startswith("chosen")
    assert {"model.onnx", "tokenizer.json", "labels.json"} <= {p.name for p in chosen.iterdir()}
    # a zero limit on a model where int8 flips some rows keeps the fp32 safety net or a lossless variant
    strict = q.model_copy(update={"max_accuracy_drop": 0.0})
    _, report = build_and_select(
        big_vocab, tmp_path / "work2", strict, _inputs(tokenizer), package=package,
        load=lambda d: OnnxClassifier.from_dir(d, threads=1), selection=(texts, gold),
        measure=MEASURE)
    winner = {c["name"]: c for c in report["candidates"]}[report["variant"]]
    assert winner["accuracy_drop"] <= 0.0 and report["within_limit"]


# --- OnnxClassifier -------------------------------------------------------------------------

def test_classifier_logits_equal_session_and_torch(model_dir, small, tokenizer):
    clf = OnnxClassifier.from_dir(model_dir, threads=1)
    texts = sentences(9, seed=5)
    got = clf.predict_logits(texts, batch_size=4)
    assert got.shape == (9, len(LABELS))
    np.testing.assert_allclose(got, run_session(model_dir / "model.onnx", tokenizer, texts), atol=1e-4)
    np.testing.assert_allclose(got, torch_logits(small[0], tokenizer, texts), atol=1e-4)


def test_classifier_logits_do_not_depend_on_batch_mates(model_dir):
    clf = OnnxClassifier.from_dir(model_dir)
    texts = sentences(20, seed=6, max_words=30)
    alone = clf.predict_logits(texts, batch_size=1)
    for batch_size in (3, 32):
        np.testing.assert_allclose(clf.predict_logits(texts, batch_size=batch_size), alone, atol=1e-4)
    # one short text padded next to a long one
    short, long = "ba", " ".join(["ma"] * 25)
    np.testing.assert_allclose(clf.predict_logits([short, long])[0], clf.predict_logits([short])[0], atol=1e-4)
    assert clf.predict_logits([]).shape == (0, len(LABELS))


def test_classifier_truncates_at_max_length_from_distillery_json(model_dir, tmp_path):
    clf = OnnxClassifier.from_dir(model_dir)
    assert clf.max_length == MAX_LENGTH
    head = " ".join(["ba", "ce", "di"] * 15)  # 45 words: beyond MAX_LENGTH - 2
    logits = clf.predict_logits([head, head + " po pu pe", head[:20]])
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-6)  # the tail was cut off
    assert np.abs(logits[0] - logits[2]).max() > 1e-3
    # without distillery.json the default applies
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "labels.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    assert OnnxClassifier.from_dir(tmp_path).max_length == DEFAULT_MAX_LENGTH


def test_predict_names_labels_and_probabilities_sum_to_one(model_dir):
    clf = OnnxClassifier.from_dir(model_dir)
    texts = sentences(12, seed=7)
    preds, logits = clf.predict(texts), clf.predict_logits(texts)
    assert len(preds) == len(texts)
    for pred, row in zip(preds, logits):
        assert list(pred["probabilities"]) == LABELS
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert pred["label"] == LABELS[int(row.argmax())]
        assert max(pred["probabilities"], key=pred["probabilities"].get) == pred["label"]
    assert clf.size_bytes() == os.path.getsize(model_dir / "model.onnx")


def test_classifier_rejects_label_count_mismatch(model_dir, tmp_path):
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    (tmp_path / "labels.json").write_text(json.dumps({"labels": ["a", "b"]}))
    with pytest.raises(ValueError, match="3 outputs"):
        OnnxClassifier.from_dir(tmp_path)


def test_serving_never_imports_torch(model_dir):
    code = ("import sys\n"
            "from distillery.onnx_model import OnnxClassifier\n"
            f"clf = OnnxClassifier.from_dir({str(model_dir)!r})\n"
            "pred = clf.predict(['ba be', 'ma'])\n"
            "assert len(pred) == 2, pred\n"
            "leaked = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
            "assert not leaked, leaked\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
