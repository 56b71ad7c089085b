"""Width reduction (student.py), vocabulary trimming (vocab.py), layer dropping and iterative
pruning schedules (pruning.py), on tiny random BERTs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from distillery.config import ConfigError, StudentConfig
from distillery.modeling import load_model_dir, save_model_dir
from distillery.pruning import count_parameters, drop_layers, encoder_layers, step_fractions
from distillery.student import (WidthImportance, activation_importance, build_student, shrink_width,
                                trim_positions)
from distillery.vocab import plan_vocabulary, token_counts, trim_vocabulary
from tests.helpers import make_tiny_teacher

HIDDEN, HEADS, INTER, HEAD = 32, 4, 64, 8


def tiny(seed: int = 0, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=layers,
                     intermediate_size=INTER, num_labels=3, max_position_embeddings=40, initializer_range=0.2,
                     attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def batch(seed: int = 1, b: int = 3, s: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": torch.randint(5, 60, (b, s), generator=g) * mask, "attention_mask": mask}


def logits(model, b) -> torch.Tensor:
    with torch.no_grad():
        return model(**b).logits


# --------------------------------------------------------------------------- width

def test_shrink_width_keeping_everything_is_exact():
    model, b = tiny(), batch()
    before = logits(model, b)
    shrink_width(model, activation_importance(model, [b]), HIDDEN, HEADS, INTER)
    assert torch.allclose(logits(model, b), before, atol=1e-6)


def test_shrink_width_keeps_the_highest_scoring_channels_heads_and_neurons():
    model = tiny()
    channels = torch.zeros(HIDDEN)
    channels[[3, 7, 11, 20, 30, 31, 0, 9]] = torch.arange(8, 0, -1, dtype=torch.float)  # 8 ranked channels
    heads = [torch.tensor([0.1, 0.9, 0.5, 0.2]), torch.tensor([0.3, 0.1, 0.2, 0.8])]
    neurons = [torch.arange(INTER, dtype=torch.float), -torch.arange(INTER, dtype=torch.float)]
    emb_before = model.bert.embeddings.word_embeddings.weight.detach().clone()
    q_before = encoder_layers(model)[0].attention.self.query.weight.detach().clone()
    kept = shrink_width(model, WidthImportance(channels, heads, neurons), hidden_size=16, heads=2,
                        intermediate_size=10)
    top16 = sorted(sorted(range(HIDDEN), key=lambda j: (-float(channels[j]), j))[:16])
    assert kept == top16
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, emb_before[:, top16])
    layer0 = encoder_layers(model)[0]
    assert layer0.attention.self.num_attention_heads == 2
    rows = torch.cat([torch.arange(h * HEAD, (h + 1) * HEAD) for h in (1, 2)])  # layer 0 keeps heads 1 and 2
    assert torch.equal(layer0.attention.self.query.weight, q_before[rows][:, top16])
    assert layer0.intermediate.dense.out_features == 10
    assert model.config.distillery_structure == {"heads": [2, 2], "intermediate": [10, 10]}
    assert (model.config.hidden_size, model.config.num_attention_heads) == (16, 2)
    assert logits(model, batch()).shape == (3, 3)


def test_activation_importance_finds_an_amplified_channel():
    model = tiny()
    with torch.no_grad():  # channel 5 is 50x larger after every LayerNorm
        for norm in [model.bert.embeddings.LayerNorm] + [m for layer in encoder_layers(model)
                                                         for m in (layer.attention.output.LayerNorm,
                                                                   layer.output.LayerNorm)]:
            norm.weight[5] *= 50
    imp = activation_importance(model, [batch()])
    assert int(imp.channels.argmax()) == 5
    assert all(h.shape == (HEADS,) for h in imp.heads) and all(n.shape == (INTER,) for n in imp.neurons)


def test_narrow_student_saves_and_loads_exactly(tmp_path):
    src = make_tiny_teacher(tmp_path / "t", ["good film", "bad plot", "a fine and moving story"], hidden=32,
                            heads=4, intermediate=64)
    teacher = BertForSequenceClassification.from_pretrained(src, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(src)
    cfg = StudentConfig(layers=[0, 2], hidden_size=16, heads=2, intermediate_size=24, importance_batches=2,
                        trim_vocabulary=True, trim_positions=True)
    built = build_student(teacher, tok, cfg, ["good film", "a fine story"], max_length=16, seed=0, batch_size=2)
    assert built.model.config.hidden_size == 16 and built.model.config.max_position_embeddings == 16
    assert built.model.config.vocab_size == len(built.vocab_keep) < teacher.config.vocab_size
    save_model_dir(built.model, built.tokenizer, ["neg", "pos"], tmp_path / "s", {"max_length": 16})
    model, tokenizer, _, _ = load_model_dir(tmp_path / "s")
    enc = tokenizer(["good film", "a fine story"], padding=True, return_tensors="pt")
    assert torch.allclose(logits(model, dict(enc)), logits(built.model.eval(), dict(enc)), atol=1e-6)


def test_width_must_fit_whole_heads():
    model = tiny()
    imp = activation_importance(model, [batch()])
    with pytest.raises(ConfigError, match="multiple of the head size"):
        shrink_width(model, imp, hidden_size=20, heads=None, intermediate_size=None)
    with pytest.raises(ConfigError, match="student.heads"):
        shrink_width(model, imp, hidden_size=16, heads=3, intermediate_size=None)


def test_trim_positions_keeps_the_first_rows():
    model, b = tiny(), batch()
    before = logits(model, b)
    trim_positions(model, 9)
    assert model.bert.embeddings.position_embeddings.num_embeddings == 9
    assert torch.allclose(logits(model, b), before, atol=1e-6)  # inputs of <= 9 tokens: unchanged


# --------------------------------------------------------------------------- vocabulary

TRAIN = ["a good film", "a bad film !", "good , good plot"]


@pytest.fixture()
def tiny_lm(tmp_path):
    src = make_tiny_teacher(tmp_path / "t", TRAIN + ["unseen words only here", "zebra"], hidden=16, heads=2,
                            intermediate=32, layers=1)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=2).eval()
    return model, AutoTokenizer.from_pretrained(src)


def test_trimmed_vocabulary_tokenizes_training_text_identically_and_keeps_logits(tiny_lm):
    model, tok = tiny_lm
    old_vocab = len(tok)
    enc_old = tok(TRAIN, padding=True, return_tensors="pt")
    before = logits(model, dict(enc_old))
    model, new_tok, keep = trim_vocabulary(model, tok, TRAIN, max_length=16)
    assert len(new_tok) == len(keep) < old_vocab
    enc_new = new_tok(TRAIN, padding=True, return_tensors="pt")
    keep_t = torch.tensor(keep)
    assert torch.equal(keep_t[enc_new["input_ids"]], enc_old["input_ids"])  # same tokens, renumbered
    assert torch.allclose(logits(model, dict(enc_new)), before, atol=1e-6)
    assert model.get_input_embeddings().num_embeddings == len(keep)


def test_unseen_words_map_to_unk_not_to_a_wrong_token(tiny_lm):
    model, tok = tiny_lm
    _, new_tok, keep = trim_vocabulary(model, tok, TRAIN, max_length=16)
    ids = new_tok("zebra good")["input_ids"]
    # [CLS] zebra good [SEP]: "zebra" (not in training text) becomes [UNK], "good" is kept
    assert new_tok.convert_ids_to_tokens(ids) == ["[CLS]", "[UNK]", "good", "[SEP]"]


def test_min_frequency_drops_rare_pieces(tiny_lm):
    _, tok = tiny_lm
    counts = token_counts(tok, TRAIN, 16)
    vocab = tok.get_vocab()
    keep1, keep2 = plan_vocabulary(tok, counts, 1), plan_vocabulary(tok, counts, 2)
    assert vocab["bad"] in keep1 and vocab["bad"] not in keep2  # seen once
    assert vocab["good"] in keep2 and vocab["film"] in keep2    # seen 3 and 2 times
    assert all(vocab[s] in keep2 for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))


# --------------------------------------------------------------------------- pruning schedule, layers

@pytest.mark.parametrize("fraction,steps", [(0.5, 1), (0.5, 2), (0.75, 3), (0.0, 4)])
def test_step_fractions_compose_to_the_target(fraction, steps):
    fr = step_fractions(fraction, steps)
    left = 1.0
    for f in fr:
        left *= 1 - f
    assert len(fr) == steps and left == pytest.approx(1 - fraction)
    assert step_fractions(0.5, 2) == pytest.approx([0.25, 1 / 3])  # 1 -> 0.75 -> 0.5


def test_drop_layers_removes_exactly_those_layers():
    model = tiny(layers=3)
    kept_weight = encoder_layers(model)[2].output.dense.weight.detach().clone()
    before = count_parameters(model)
    drop_layers(model, [0, 1])
    assert model.config.num_hidden_layers == 1 and len(encoder_layers(model)) == 1
    assert torch.equal(encoder_layers(model)[0].output.dense.weight, kept_weight)
    assert count_parameters(model) < before and logits(model, batch()).shape == (3, 3)
    with pytest.raises(ValueError, match="at least one layer"):
        drop_layers(model, [0])
