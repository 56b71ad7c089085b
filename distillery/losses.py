"""Distillation losses, chosen by name in `params.yaml` (`distill.loss`)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows with a gold label (label >= 0). Augmented texts carry
    label -1: they are learnt from the teacher's soft targets only. 0 when no row has one."""
    known = labels >= 0
    if bool(known.all()):
        return F.cross_entropy(logits, labels)
    if not bool(known.any()):
        return logits.sum() * 0.0  # keeps the graph (and the dtype/device) without a NaN
    return F.cross_entropy(logits[known], labels[known]) * known.float().mean()


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
              temperature: float, alpha: float) -> torch.Tensor:
    """Knowledge distillation loss of Hinton, Vinyals & Dean (2015).

        L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

    s, t: student and teacher logits [batch, classes]; y: gold labels [batch].
    The T^2 factor keeps the soft-target gradients on the same scale as the hard
    ones when T changes (their magnitude shrinks as 1/T^2). With no teacher logits
    (fine-tuning the teacher itself) the loss is plain cross-entropy.
    """
    ce = masked_cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha >= 1.0:
        return ce
    T = temperature
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q): KL(p || q)
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1.0 - alpha) * (T * T) * kl


def mse_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
               temperature: float, alpha: float) -> torch.Tensor:
    """Logit regression of Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT
    into Simple Neural Networks" (after Ba & Caruana 2014):

        L = alpha * CE(y, s) + (1 - alpha) * mean_batch ||t - s||_2^2

    s, t: student and teacher logits [batch, classes]. Matching logits rather than tempered
    probabilities keeps the information that softmax discards (their scale and offset);
    `temperature` does not apply and is ignored. With no teacher logits: plain cross-entropy.
    """
    ce = masked_cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha >= 1.0:
        return ce
    mse = ((student_logits - teacher_logits) ** 2).sum(-1).mean()
    return alpha * ce + (1.0 - alpha) * mse


def fuse_soft_targets(logits: list[torch.Tensor], weights: list[float], temperature: float) -> torch.Tensor:
    """Several teachers' logits [batch, classes] fused into one set of soft targets.

    The fused target is the weighted mean of the teachers' tempered distributions,
        p = sum_i w_i softmax(t_i / T) / sum_i w_i,
    returned as logits z = T * log p, so that softmax(z / T) == p exactly and the KD loss
    can take them like any teacher's logits (model fusion / multi-teacher KD, e.g.
    Hinton et al. 2015 sec. 2 on ensembles; You et al. 2017).
    """
    if not logits or len(logits) != len(weights):
        raise ValueError("fuse_soft_targets: one weight per teacher, at least one teacher")
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    probs = sum(wi * F.softmax(t.double() / temperature, dim=-1) for wi, t in zip(w, logits))
    return (temperature * torch.log(probs.clamp_min(1e-30))).float()


class IntermediateLoss(torch.nn.Module):
    """Layer-to-layer transfer from a frozen teacher, added to the logit KD loss.

    Hidden states (TinyBERT, Jiao et al. 2020): for each student layer l mapped to teacher
    layer m(l), and for the embedding outputs,
        L_hid = mean_l MSE(h_s^l W, h_t^m(l))      over real (unpadded) tokens,
    with W [H_s, H_t] a learned projection (initialised to put each kept student channel
    back in its teacher channel, so that a width-pruned student starts near zero loss).
    Attention (MiniLM, Wang et al. 2020, over head-averaged maps so that students with
    fewer heads still compare):
        L_att = mean_l KL(A_t^m(l) || A_s^l),  A = mean over heads of softmax(QK^T/sqrt(d)).
    L = hidden_weight * L_hid + attention_weight * L_att.

    The teacher sees the student's tokens mapped back to its own ids (`id_map`, after
    vocabulary trimming), so both encode the same token sequence position by position.
    """

    def __init__(self, teacher: torch.nn.Module, layer_map: list[int], hidden_weight: float,
                 attention_weight: float, student_width: int, teacher_width: int,
                 channels: list[int] | None = None, id_map: list[int] | None = None):
        super().__init__()
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, not trained
        self.layer_map, self.hidden_weight, self.attention_weight = list(layer_map), hidden_weight, attention_weight
        self.proj = torch.nn.Linear(student_width, teacher_width, bias=False)  # W: (H_t, H_s)
        with torch.no_grad():
            self.proj.weight.zero_()
            chans = channels if channels is not None else range(min(student_width, teacher_width))
            for j, c in enumerate(chans):
                self.proj.weight[c, j] = 1.0
        self.register_buffer("id_map", torch.tensor(id_map, dtype=torch.long) if id_map is not None else None,
                             persistent=False)

    def _apply(self, fn, recurse=True):
        # The frozen teacher is no submodule, yet it must follow `.to(device)` to the student's
        # device (CUDA, or a rank's GPU under accelerate launch).
        self._teacher[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @property
    def needs_attentions(self) -> bool:
        return self.attention_weight > 0

    def forward(self, student_out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, S)
        teacher_ids = self.id_map[ids] if self.id_map is not None else ids
        with torch.no_grad():
            t_out = self._teacher[0](input_ids=teacher_ids, attention_mask=mask, output_hidden_states=True,
                                     output_attentions=self.needs_attentions)
        m = mask.unsqueeze(-1).to(student_out.hidden_states[0].dtype)  # (B, S, 1)
        n_tok = m.sum().clamp_min(1.0)
        loss = student_out.hidden_states[0].new_zeros(())
        if self.hidden_weight > 0:
            pairs = [(0, 0)] + [(l + 1, t + 1) for l, t in enumerate(self.layer_map)]  # index 0: embeddings
            hid = sum((((self.proj(student_out.hidden_states[s]) - t_out.hidden_states[t]) ** 2) * m).sum()
                      / (n_tok * t_out.hidden_states[t].shape[-1]) for s, t in pairs)
            loss = loss + self.hidden_weight * hid / len(pairs)
        if self.needs_attentions:
            att = 0.0
            for l, t in enumerate(self.layer_map):
                a_s = student_out.attentions[l].mean(1).clamp_min(1e-12)  # (B, S, S), rows sum to 1
                a_t = t_out.attentions[t].mean(1).clamp_min(1e-12)
                kl = (a_t * (a_t.log() - a_s.log())).sum(-1)  # (B, S): one KL per query token
                att = att + (kl * mask).sum() / n_tok
            loss = loss + self.attention_weight * att / len(self.layer_map)
        return loss


KDLoss = Callable[..., torch.Tensor]
LOSSES: dict[str, KDLoss] = {"hinton_kd": hinton_kd, "mse_logits": mse_logits}


def get_loss(name: str) -> KDLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown distillation loss {name!r}; known: {sorted(LOSSES)}") from None
