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


def test_unknown_loss_name_is_rejected():
    with pytest.raises(KeyError, match="unknown distillation loss"):
        get_loss("nope")
