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
from distillery.quantization import export_onnx, quantize_dynamic_int8

OPSET = 18
MAX_LENGTH = 32
LABELS = ["positive", "negative", "neutral"]  # deliberately not alphabetical
# 5 specials + 26 letters + 65 syllables = 96 word pieces
WORDS = list("abcdefghijklmnopqrstuvwxyz") + [c + v for c in "bcdfghlmnprst" for v in "aeiou"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def tiny_bert(hidden: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
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
    """Hidden-64 model, fp32 and int8 (per-channel) ONNX."""
    model = tiny_bert(64, seed=1)
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
    tables = [t for t in onnx.load(str(int8)).graph.initializer if tuple(t.dims) == (len(VOCAB), 64)]
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
