"""KD loss on hand-computed logits (values worked out on paper, see comments)."""

import math

import pytest
import torch

from distillery.losses import get_loss, hinton_kd

S = torch.tensor([[1.0, 0.0]])  # student logits
T_ = torch.tensor([[0.0, 1.0]])  # teacher logits: disagrees with the student
Y = torch.tensor([0])

# CE(y=0, s) = log(1 + e^-1)
CE = math.log(1 + math.exp(-1))
# T=1: p = softmax(t) = [1-a, a], q = softmax(s) = [a, 1-a], a = e/(1+e); KL(p||q) = (2a-1) * ln(a/(1-a)) = 2a-1
A = math.e / (1 + math.e)
KL_T1 = (2 * A - 1) * 1.0
# T=2: logits halved; a2 = sigmoid(0.5); KL = (2*a2-1) * 0.5, scaled by T^2 = 4
A2 = 1 / (1 + math.exp(-0.5))
KL_T2 = (2 * A2 - 1) * 0.5


@pytest.mark.parametrize("temperature,alpha,expected", [
    (1.0, 0.5, 0.5 * CE + 0.5 * KL_T1),
    (2.0, 0.5, 0.5 * CE + 0.5 * 4 * KL_T2),
    (2.0, 1.0, CE),                 # hard labels only
    (2.0, 0.0, 4 * KL_T2),          # soft targets only
])
def test_hinton_kd_matches_hand_computation(temperature, alpha, expected):
    loss = hinton_kd(S, T_, Y, temperature=temperature, alpha=alpha)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_kd_is_zero_when_student_matches_teacher_and_alpha_zero():
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    assert hinton_kd(logits, logits.clone(), torch.tensor([2]), 3.0, 0.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_without_teacher_is_cross_entropy():
    assert hinton_kd(S, None, Y, 2.0, 0.3).item() == pytest.approx(CE, abs=1e-6)


def test_kd_gradient_pulls_student_towards_teacher():
    s = S.clone().requires_grad_(True)
    hinton_kd(s, T_, Y, 2.0, 0.0).backward()
    # Teacher prefers class 1: the gradient step (-grad) must raise logit 1 relative to logit 0.
    assert (-s.grad[0, 1]) > (-s.grad[0, 0])


@pytest.mark.parametrize("alpha,expected", [
    (0.0, 5.0),                    # ||[0, 4] - [1, 2]||^2 = 1 + 4
    (0.5, 0.5 * CE + 0.5 * 5.0),
    (1.0, CE),
])
def test_mse_logits_matches_hand_computation(alpha, expected):
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])  # squared distance 1 + 4
    assert get_loss("mse_logits")(s, t, Y, temperature=7.0, alpha=alpha).item() == pytest.approx(expected, abs=1e-6)


def test_mse_logits_averages_rows_and_ignores_the_temperature():
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 3.0], [1.0, 1.0]])  # squared distances 9 and 2: mean 5.5
    loss = get_loss("mse_logits")
    assert loss(s, t, torch.tensor([-1, -1]), 1.0, 0.0).item() == pytest.approx(5.5, abs=1e-6)
    assert loss(s, t, torch.tensor([-1, -1]), 4.0, 0.0).item() == pytest.approx(5.5, abs=1e-6)
    assert loss(s, s.clone(), torch.tensor([-1, -1]), 1.0, 0.0).item() == 0.0


def test_unknown_loss_name_is_rejected():
    with pytest.raises(KeyError, match="unknown distillation loss"):
        get_loss("nope")


# --------------------------------------------------------------------------- masked CE, fusion

def test_augmented_rows_without_labels_add_no_cross_entropy():
    from distillery.losses import masked_cross_entropy

    s = torch.tensor([[1.0, 0.0], [5.0, -5.0]])
    # row 1 has no gold label: the loss is row 0's CE averaged over both rows
    assert masked_cross_entropy(s, torch.tensor([0, -1])).item() == pytest.approx(CE / 2, abs=1e-6)
    assert masked_cross_entropy(s, torch.tensor([-1, -1])).item() == 0.0


def test_fused_soft_targets_are_the_weighted_mean_distribution():
    from distillery.losses import fuse_soft_targets

    t1, t2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # [0.5, 0.5] and [0.75, 0.25] at T=1
    fused = fuse_soft_targets([t1, t2], [1.0, 3.0], temperature=1.0)
    # p = (1 * [0.5, 0.5] + 3 * [0.75, 0.25]) / 4 = [0.6875, 0.3125]
    assert torch.softmax(fused, -1)[0].tolist() == pytest.approx([0.6875, 0.3125], abs=1e-6)
    t = 2.0  # at T=2 the fused logits reproduce the mean of the tempered distributions
    fused = fuse_soft_targets([t1, t2], [1.0, 1.0], temperature=t)
    expect = (torch.softmax(t1 / t, -1) + torch.softmax(t2 / t, -1)) / 2
    assert torch.allclose(torch.softmax(fused / t, -1), expect, atol=1e-6)


# --------------------------------------------------------------------------- intermediate layers

def _tiny_bert(seed=0, hidden=16, heads=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=30, hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=2, intermediate_size=32,
        num_labels=2, attn_implementation="eager")).eval()


def _ids():
    return {"input_ids": torch.tensor([[2, 5, 7, 9, 3], [2, 6, 3, 0, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}


def test_intermediate_loss_is_zero_for_a_copy_of_the_teacher_and_positive_otherwise():
    from distillery.losses import IntermediateLoss

    teacher = _tiny_bert(0)
    b = _ids()
    for student, zero in ((_tiny_bert(0), True), (_tiny_bert(1), False)):
        loss = IntermediateLoss(teacher, [0, 1], hidden_weight=1.0, attention_weight=1.0,
                                student_width=16, teacher_width=16)
        out = student(**b, output_hidden_states=True, output_attentions=True)
        value = loss(out, b).item()
        assert (value == pytest.approx(0.0, abs=1e-6)) if zero else value > 1e-3


def test_intermediate_loss_projection_starts_at_the_kept_channels_and_trains():
    from distillery.losses import IntermediateLoss

    loss = IntermediateLoss(_tiny_bert(0), [1], 1.0, 0.0, student_width=2, teacher_width=16, channels=[3, 9],
                            id_map=list(range(30)))
    w = loss.proj.weight  # (16, 2): student channel j -> teacher channel channels[j]
    assert w[3, 0] == 1 and w[9, 1] == 1 and w.abs().sum() == 2
    assert [n for n, _ in loss.named_parameters()] == ["proj.weight"]  # the teacher is not trained


def test_intermediate_loss_moves_its_frozen_teacher_along():
    from distillery.losses import IntermediateLoss

    loss = IntermediateLoss(_tiny_bert(0), [1], 1.0, 0.0, student_width=16, teacher_width=16)
    loss.to(torch.float64)  # what .to("cuda") does to the device, shown on the dtype on a CPU-only machine
    assert loss.proj.weight.dtype == torch.float64
    assert {p.dtype for p in loss._teacher[0].parameters()} == {torch.float64}
    assert list(loss.parameters()) == [loss.proj.weight]  # still not trained with the student
