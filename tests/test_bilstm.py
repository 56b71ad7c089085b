"""The BiLSTM student: padding invariance, building from a teacher, save/load, ONNX export and int8."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from distillery.bilstm import BiLSTMClassifier, BiLSTMConfig, project_embeddings, reverse_padded
from distillery.config import BiLSTMStudentConfig, ConfigError, StudentConfig
from distillery.model_source import ModelLoadError
from distillery.modeling import load_model_dir, save_model_dir
from tests.helpers import make_tiny_teacher

VOCAB = 40


def bilstm(pooling: str = "final", layers: int = 2, classifier_hidden: int = 7, seed: int = 0,
           embedding_dim: int = 8, hidden_size: int = 6) -> BiLSTMClassifier:
    torch.manual_seed(seed)
    cfg = BiLSTMConfig(vocab_size=VOCAB, embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=layers,
                       dropout=0.1,
                       pooling=pooling, classifier_hidden=classifier_hidden, num_labels=3, pad_token_id=0)
    return BiLSTMClassifier(cfg).eval()


def padded_batch(lengths: list[int], width: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows; the padding holds random ids (not [PAD]) so that any leak would show."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=g)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids, mask


def test_reverse_padded_reverses_each_row_within_its_length_only():
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]).unsqueeze(-1)  # (2, 4, 1)
    out = reverse_padded(x, torch.tensor([4, 2]))
    assert out.squeeze(-1).tolist() == [[4, 3, 2, 1], [6, 5, 0, 0]]
    assert torch.equal(reverse_padded(out, torch.tensor([4, 2])), x)  # its own inverse


@pytest.mark.parametrize("pooling", ["final", "max"])
def test_padding_does_not_change_a_texts_logits(pooling):
    model = bilstm(pooling)
    lengths = [9, 5, 1]
    ids, mask = padded_batch(lengths, 12)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        alone = torch.cat([model(input_ids=ids[i:i + 1, :n], attention_mask=mask[i:i + 1, :n]).logits
                           for i, n in enumerate(lengths)])
    assert batch.shape == (3, 3)
    torch.testing.assert_close(batch, alone, atol=1e-6, rtol=0)
    # the same rows with other padding content and width
    ids2, mask2 = padded_batch(lengths, 15, seed=7)
    ids2[:, :9] = ids[:, :9]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids2, attention_mask=mask2).logits, batch, atol=1e-6, rtol=0)


def test_both_directions_and_every_real_token_count():
    """Changing the first or the last real token moves the logits (both directions are read)."""
    model = bilstm("final", layers=1)
    ids, mask = padded_batch([6], 6)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        for pos in (0, 5):
            changed = ids.clone()
            changed[0, pos] = 2 if int(ids[0, pos]) == 1 else 1
            assert not torch.allclose(model(input_ids=changed, attention_mask=mask).logits, base)


def test_intermediate_outputs_are_refused():
    ids, mask = padded_batch([3], 3)
    with pytest.raises(ValueError, match="hidden_weight"):
        bilstm()(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def test_projected_embeddings_keep_a_rank_one_tables_geometry():
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5.0
    table = torch.tensor([[0.0], [1.0], [3.0], [-2.0]]) * direction  # (4, 3), every row on one line
    out = project_embeddings(table, 1)  # (4, 1)
    assert out.shape == (4, 1)
    torch.testing.assert_close(torch.cdist(out, out), torch.cdist(table, table), atol=1e-5, rtol=0)
    assert torch.equal(project_embeddings(table, None), table) and torch.equal(project_embeddings(table, 3), table)
    with pytest.raises(ValueError, match="wider"):
        project_embeddings(table, 4)


TRAIN = ["a good film", "a bad film !", "good , good plot"]


@pytest.fixture()
def teacher(tmp_path):
    src = make_tiny_teacher(tmp_path / "t", TRAIN + ["unseen words only here"], hidden=16, heads=2,
                            intermediate=32, layers=1)
    return BertForSequenceClassification.from_pretrained(src, num_labels=3).eval(), AutoTokenizer.from_pretrained(src)


def test_built_from_the_teachers_trimmed_embeddings(teacher):
    from distillery.student import build_student

    model, tok = teacher
    cfg = StudentConfig(architecture="bilstm", trim_vocabulary=True,
                        bilstm=BiLSTMStudentConfig(hidden_size=5, classifier_hidden=0, freeze_embeddings=True))
    built = build_student(model, tok, cfg, TRAIN, max_length=16, seed=0)
    student = built.model
    assert isinstance(student, BiLSTMClassifier) and built.info["architecture"] == "bilstm"
    assert len(built.tokenizer) == len(built.vocab_keep) < len(tok)
    teacher_rows = model.get_input_embeddings().weight[torch.tensor(built.vocab_keep)]
    assert torch.equal(student.embeddings.weight, teacher_rows)
    assert not student.embeddings.weight.requires_grad and student.forward_lstms[0].weight_ih_l0.requires_grad
    # training texts tokenize to the same pieces, renumbered
    old = tok(TRAIN)["input_ids"]
    new = built.tokenizer(TRAIN)["input_ids"]
    assert [[built.vocab_keep[i] for i in row] for row in new] == old
    narrow = build_student(model, tok, cfg.model_copy(update={"bilstm": BiLSTMStudentConfig(embedding_dim=4)}),
                           TRAIN, max_length=16, seed=0).model
    assert narrow.embeddings.weight.shape == (len(built.vocab_keep), 4)
    with pytest.raises(ConfigError, match="student.bilstm.embedding_dim: 17 is wider"):
        build_student(model, tok, cfg.model_copy(update={"bilstm": BiLSTMStudentConfig(embedding_dim=17)}),
                      TRAIN, max_length=16, seed=0)


def save(model, tmp_path, teacher_tok):
    return save_model_dir(model, teacher_tok, ["neg", "neu", "pos"], tmp_path / "student", {"max_length": 16})


def test_save_and_load_give_identical_logits(tmp_path, teacher):
    model = bilstm("max")
    out = save(model, tmp_path, teacher[1])
    assert json.loads((out / "config.json").read_text())["architecture"] == "bilstm"
    loaded, tok, labels, meta = load_model_dir(out)
    assert isinstance(loaded, BiLSTMClassifier) and labels == ["neg", "neu", "pos"] and meta["max_length"] == 16
    assert loaded.config == model.config and len(tok) == len(teacher[1])
    ids, mask = padded_batch([7, 3], 7)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits,
                           model(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("change,needle", [
    ({"architecture": "gru"}, "architecture: 'gru' is not a known student architecture"),
    ({"hidden_size": "wide"}, "hidden_size: Input should be a valid integer"),
    ({"pooling": "mean"}, "pooling: Input should be 'final' or 'max'"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"hidden_size": 4}, "model.safetensors: does not match"),
])
def test_a_wrong_config_is_a_clear_error(tmp_path, teacher, change, needle):
    out = save(bilstm(), tmp_path, teacher[1])
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ModelLoadError, match="config.json|model.safetensors") as err:
        load_model_dir(out)
    assert needle in str(err.value)


def test_onnx_export_matches_torch_and_int8_quantizes_the_lstms(tmp_path):
    """Two exports in one process (the second used to bake in the sequence length), fp32 parity on
    padded batches of another length, and ORT dynamic int8 turning every LSTM into DynamicQuantizeLSTM
    (with 4 x 16 x 160 input weights: above the size up to which the exporter folds them itself)."""
    import onnxruntime as ort

    from distillery.quantization import export_onnx, quantize_dynamic_int8

    def run(path, ids, mask):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
        return sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

    lengths = [int(n) for n in np.random.default_rng(0).integers(1, 30, 64)]
    ids, mask = padded_batch(lengths, 30)
    for pooling, layers in (("max", 2), ("final", 1)):
        model = bilstm(pooling, layers, embedding_dim=160, hidden_size=16)
        fp32 = export_onnx(model, tmp_path / f"{pooling}.onnx", opset=18, max_length=32)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
        assert np.abs(run(fp32, ids, mask) - ref).max() < 1e-4
    int8 = quantize_dynamic_int8(fp32, tmp_path / "int8.onnx", per_channel=True)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "LSTM" not in ops and ops.count("DynamicQuantizeLSTM") == 2  # forward and backward
    got = run(int8, ids, mask)
    assert np.abs(got - ref).max() < 0.05
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
