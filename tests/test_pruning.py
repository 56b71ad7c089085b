"""Unit tests for structured pruning (distillery/pruning.py) on a tiny random BERT."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, BertConfig, BertForSequenceClassification

from distillery.pruning import (
    STRUCTURE_KEY,
    Importance,
    PruningPlan,
    apply_pruning,
    compute_importance,
    count_parameters,
    plan_pruning,
    restore_structure,
)

HIDDEN, HEADS, LAYERS, INTER, HEAD_SIZE = 32, 4, 2, 64, 8
PER_HEAD = 3 * (HEAD_SIZE * HIDDEN + HEAD_SIZE) + HIDDEN * HEAD_SIZE  # q/k/v rows+bias, output cols
PER_NEURON = (HIDDEN + 1) + HIDDEN  # intermediate row + bias, output column


def tiny_model(attn: str = "eager", seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_attention_heads=HEADS,
                        num_hidden_layers=LAYERS, intermediate_size=INTER, num_labels=2,
                        # large init so that heads and neurons visibly move the logits
                        initializer_range=0.2, attn_implementation=attn)
    return BertForSequenceClassification(config).eval()


def make_batch(seed: int = 1, batch: int = 3, seq: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 4:] = 0  # padding, so masked positions must stay masked after pruning
    mask[2, 2:] = 0
    return {"input_ids": torch.randint(1, 100, (batch, seq), generator=g),
            "attention_mask": mask,
            "labels": torch.randint(0, 2, (batch,), generator=g)}


def ce_loss(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(out.logits, batch["labels"])


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def masked_copy(model, plan: PruningPlan):
    """The original with removed heads' output columns and removed neurons' input rows zeroed."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer, hk, nk in zip(masked.bert.encoder.layer, plan.heads_keep, plan.neurons_keep):
            d = layer.attention.self.attention_head_size
            for h in range(layer.attention.self.num_attention_heads):
                if h not in hk:
                    layer.attention.output.dense.weight[:, h * d:(h + 1) * d] = 0
            for j in range(layer.intermediate.dense.out_features):
                if j not in nk:  # GELU(0) == 0, so the neuron contributes nothing
                    layer.intermediate.dense.weight[j] = 0
                    layer.intermediate.dense.bias[j] = 0
    return masked


# --------------------------------------------------------------------------- plan (hand-computed)

def test_plan_hand_example_global_heads_keep_one_per_layer():
    imp = Importance(heads=[torch.tensor([0.50, 0.10, 0.80, 0.20]),
                            torch.tensor([0.05, 0.01, 0.02, 0.03])],
                     neurons=[torch.tensor([0.3, 0.1, 0.4, 0.2]),
                              torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1])])
    plan = plan_pruning(imp, head_fraction=0.5, ffn_fraction=0.5)
    # 4 of 8 heads go: layer 1's 0.01, 0.02, 0.03; its 0.05 would empty the layer, so it
    # survives and layer 0's 0.10 goes instead.
    assert plan.heads_keep == [[0, 2, 3], [0]]
    # layer 0: drop round(2.0)=2 lowest (0.1, 0.2); layer 1: round(2.5)=2 -> drop 0.1, 0.2
    assert plan.neurons_keep == [[0, 2], [0, 1, 2]]


def test_plan_ties_broken_by_index():
    imp = Importance(heads=[torch.ones(4), torch.ones(4)], neurons=[torch.ones(4), torch.ones(4)])
    plan = plan_pruning(imp, head_fraction=0.25, ffn_fraction=0.25)
    assert plan.heads_keep == [[2, 3], [0, 1, 2, 3]]
    assert plan.neurons_keep == [[1, 2, 3], [1, 2, 3]]


def test_plan_fraction_zero_keeps_everything():
    model = tiny_model()
    imp = compute_importance(model, [make_batch()], ce_loss)
    plan = plan_pruning(imp, 0.0, 0.0)
    assert plan.heads_keep == [list(range(HEADS))] * LAYERS
    assert plan.neurons_keep == [list(range(INTER))] * LAYERS
    before, n = logits(model, make_batch(5)), count_parameters(model)
    apply_pruning(model, plan)
    assert count_parameters(model) == n
    assert torch.equal(logits(model, make_batch(5)), before)


def test_plan_rejects_bad_fraction():
    imp = Importance(heads=[torch.ones(2)], neurons=[torch.ones(2)])
    with pytest.raises(ValueError, match="head_fraction"):
        plan_pruning(imp, 1.0, 0.0)
    with pytest.raises(ValueError, match="ffn_fraction"):
        plan_pruning(imp, 0.0, -0.1)


# --------------------------------------------------------------------------- apply

PLAN = PruningPlan(heads_keep=[[0, 3], [1, 2, 3]],
                   neurons_keep=[list(range(0, 64, 2)), list(range(40))])


def test_apply_shrinks_shapes_and_parameter_count():
    model = tiny_model()
    n_before = count_parameters(model)
    apply_pruning(model, PLAN)
    for layer, hk, nk in zip(model.bert.encoder.layer, PLAN.heads_keep, PLAN.neurons_keep):
        attn = layer.attention.self
        assert attn.query.weight.shape == (len(hk) * HEAD_SIZE, HIDDEN)
        assert attn.key.bias.shape == (len(hk) * HEAD_SIZE,)
        assert attn.value.weight.shape == (len(hk) * HEAD_SIZE, HIDDEN)
        assert layer.attention.output.dense.weight.shape == (HIDDEN, len(hk) * HEAD_SIZE)
        assert (attn.num_attention_heads, attn.all_head_size, attn.attention_head_size) == (
            len(hk), len(hk) * HEAD_SIZE, HEAD_SIZE)
        assert layer.intermediate.dense.weight.shape == (len(nk), HIDDEN)
        assert layer.output.dense.weight.shape == (HIDDEN, len(nk))
    removed_heads, removed_neurons = (8 - 5), (128 - 32 - 40)
    expected_drop = removed_heads * PER_HEAD + removed_neurons * PER_NEURON
    assert n_before - count_parameters(model) == expected_drop
    assert getattr(model.config, STRUCTURE_KEY) == {"heads": [2, 3], "intermediate": [32, 40]}
    assert model.config.num_attention_heads == HEADS  # head size derives from it at rebuild


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pruned_equals_masked_original(attn):
    model = tiny_model(attn)
    batch = make_batch(7)
    masked = masked_copy(model, PLAN)
    full = logits(model, batch)
    pruned = logits(apply_pruning(model, PLAN), batch)
    assert pruned.shape == (3, 2)
    torch.testing.assert_close(pruned, logits(masked, batch), atol=1e-5, rtol=0)
    # not vacuous: the removed structures did matter
    assert (pruned - full).abs().max() > 1e-3


def test_prune_twice():
    model = tiny_model()
    apply_pruning(model, PLAN)
    imp = compute_importance(model, [make_batch(2), make_batch(3)], ce_loss)
    assert [len(h) for h in imp.heads] == [2, 3] and [len(f) for f in imp.neurons] == [32, 40]
    plan = plan_pruning(imp, head_fraction=0.4, ffn_fraction=0.5)
    assert [len(k) for k in plan.heads_keep] in ([1, 2], [2, 1])  # round(0.4 * 5) = 2 go
    assert [len(k) for k in plan.neurons_keep] == [16, 20]
    masked = masked_copy(model, plan)
    apply_pruning(model, plan)
    assert getattr(model.config, STRUCTURE_KEY)["intermediate"] == [16, 20]
    batch = make_batch(9)
    torch.testing.assert_close(logits(model, batch), logits(masked, batch), atol=1e-5, rtol=0)


def test_apply_rejects_bad_plan():
    model = tiny_model()
    with pytest.raises(ValueError, match="keeps no heads"):
        apply_pruning(model, PruningPlan([[], [0]], [[0], [0]]))
    with pytest.raises(ValueError, match="sorted"):
        apply_pruning(model, PruningPlan([[0, 4], [0]], [[0], [0]]))
    with pytest.raises(ValueError, match="layers"):
        apply_pruning(model, PruningPlan([[0]], [[0]]))


# --------------------------------------------------------------------------- save / restore

def test_save_restore_round_trip(tmp_path):
    model = apply_pruning(tiny_model(), PLAN)
    model.config.save_pretrained(tmp_path)
    save_file(model.state_dict(), tmp_path / "model.safetensors")

    config = AutoConfig.from_pretrained(tmp_path)
    config._attn_implementation = "eager"
    state = load_file(tmp_path / "model.safetensors")
    with pytest.raises(RuntimeError, match="size mismatch"):  # why restore_structure exists
        BertForSequenceClassification(config).load_state_dict(state, strict=True)
    rebuilt = restore_structure(BertForSequenceClassification(config))
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    batch = make_batch(11)
    assert torch.equal(logits(rebuilt, batch), logits(model, batch))
    assert count_parameters(rebuilt) == count_parameters(model)


def test_restore_structure_noop_without_structure():
    model = tiny_model()
    n = count_parameters(model)
    assert restore_structure(model) is model
    assert count_parameters(model) == n and not hasattr(model.config, STRUCTURE_KEY)


# --------------------------------------------------------------------------- importance

def test_importance_deterministic_nonnegative_and_side_effect_free():
    model = tiny_model().train()
    frozen = model.bert.encoder.layer[0].attention.self.query.weight
    frozen.requires_grad_(False)  # as a caller might have frozen it
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    modes = []

    def loss_fn(m, b):
        modes.append(m.training)
        return ce_loss(m, b)

    batches = [make_batch(1), make_batch(2)]
    a = compute_importance(model, batches, loss_fn)
    b = compute_importance(model, batches, loss_fn)
    assert modes == [False] * 4  # dropout off while scoring
    assert model.training  # mode restored
    assert not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
        assert torch.equal(x, y) and (x >= 0).all() and x.sum() > 0
    for h in a.heads:  # L2-normalised per layer
        torch.testing.assert_close(h.norm(), torch.tensor(1.0))


def test_importance_matches_taylor_formula():
    model = tiny_model()
    batch = make_batch(4)
    imp = compute_importance(model, [batch], ce_loss)
    ref = copy.deepcopy(model)
    ce_loss(ref, batch).backward()
    layer = ref.bert.encoder.layer[1]
    i, o = layer.intermediate.dense, layer.output.dense
    expected = ((i.weight * i.weight.grad).sum(1) + i.bias * i.bias.grad
                + (o.weight * o.weight.grad).sum(0)).abs()
    torch.testing.assert_close(imp.neurons[1], expected.detach(), rtol=1e-4, atol=1e-9)
    att = layer.attention.self
    raw = torch.zeros(HEADS)
    for lin in (att.query, att.key, att.value):
        raw += (lin.weight * lin.weight.grad).view(HEADS, -1).sum(1)  # rows of head h
        raw += (lin.bias * lin.bias.grad).view(HEADS, -1).sum(1)
    ow = layer.attention.output.dense.weight
    raw += (ow * ow.grad).view(HIDDEN, HEADS, HEAD_SIZE).sum((0, 2))
    expected = (raw.abs() / raw.abs().norm()).detach()  # Michel et al.'s per-layer L2 norm
    torch.testing.assert_close(imp.heads[1], expected, rtol=1e-4, atol=1e-7)


def test_dead_head_and_neuron_score_zero_and_go_first():
    model = tiny_model()
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        layer.attention.output.dense.weight[:, 2 * HEAD_SIZE:3 * HEAD_SIZE] = 0  # head 2 is dead
        layer.intermediate.dense.weight[17] = 0  # neuron 17 is dead
        layer.intermediate.dense.bias[17] = 0
    imp = compute_importance(model, [make_batch(1), make_batch(2)], ce_loss)
    assert imp.heads[1][2] < 1e-7 and imp.neurons[1][17] < 1e-7
    assert min(float(h.min()) for h in imp.heads[:1]) > 1e-4  # the live ones are not ~0
    # 1 head of 8 and 1 neuron of 64 per layer: exactly the dead ones in layer 1
    plan = plan_pruning(imp, head_fraction=1 / 8, ffn_fraction=1 / 64)
    assert plan.heads_keep == [[0, 1, 2, 3], [0, 1, 3]]
    assert 17 not in plan.neurons_keep[1] and len(plan.neurons_keep[1]) == 63
