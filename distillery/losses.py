"""Distillation losses, chosen by name in `params.yaml` (`distill.loss`)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
              temperature: float, alpha: float) -> torch.Tensor:
    """Knowledge distillation loss of Hinton, Vinyals & Dean (2015).

        L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

    s, t: student and teacher logits [batch, classes]; y: gold labels [batch].
    The T^2 factor keeps the soft-target gradients on the same scale as the hard
    ones when T changes (their magnitude shrinks as 1/T^2). With no teacher logits
    (fine-tuning the teacher itself) the loss is plain cross-entropy.
    """
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha >= 1.0:
        return ce
    T = temperature
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q): KL(p || q)
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1.0 - alpha) * (T * T) * kl


KDLoss = Callable[..., torch.Tensor]
LOSSES: dict[str, KDLoss] = {"hinton_kd": hinton_kd}


def get_loss(name: str) -> KDLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown distillation loss {name!r}; known: {sorted(LOSSES)}") from None
