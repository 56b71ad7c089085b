"""Student builders: a smaller encoder initialised from the teacher's own weights.

Depth: keep a subset of the teacher's layers (DistilBERT, Sanh et al. 2019).
Width: keep the most important hidden channels, attention heads and FFN neurons
(Minitron, Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation"): importance is the mean activation magnitude over a few batches of
training text, which needs no labels, so the same builder serves the distilled
student and the hard-label baseline. Slicing every weight matrix along the kept
channels gives a narrower model that starts close to the teacher's function; the
distillation that follows recovers what the removed channels carried (LayerNorm now
normalises over fewer channels, which training absorbs).

The residual width H' must be a multiple of the head size d (32 for MiniLM): the stock
modules derive d = hidden_size / num_attention_heads, so a student of width H'
holds at most H'/d heads per layer (further head pruning records per-layer counts in
`config.distillery_structure`, see pruning.py). Where each family keeps its layers,
projections, norms and embeddings is its adapter's business (distillery/architectures).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import copy

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import prune_linear_layer

from distillery.architectures import adapter_for
from distillery.architectures.base import EMB, NORM, READ, SQUARE, WRITE
from distillery.bilstm import build_bilstm_student
from distillery.config import ConfigError
from distillery.pruning import STRUCTURE_KEY, current_structure, head_rows, neuron_rows


def build_student_from_layers(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """DistilBERT-style student: the teacher's embeddings, pooler, head and the chosen layers.

    Copying whole teacher layers starts the student close to the teacher's function, so
    KD converges in far fewer steps than from random init. The teacher is left untouched.
    """
    a = adapter_for(teacher)
    n_teacher = len(a.layers(teacher))
    bad = [i for i in layers if i >= n_teacher or i < 0]
    if bad:
        raise ConfigError(f"params.yaml: student.layers: {bad} out of range; the teacher has "
                          f"{n_teacher} layers (0..{n_teacher - 1})")
    student = copy.deepcopy(teacher)
    a.select_layers(student, list(layers))
    structure = getattr(teacher.config, STRUCTURE_KEY, None)
    if structure:
        setattr(student.config, STRUCTURE_KEY, current_structure(student))
    student.train(teacher.training)
    return student


# --------------------------------------------------------------------------- width

@dataclass(frozen=True)
class WidthImportance:
    """Mean absolute activations: channels (H,) of the residual stream, summed over every
    LayerNorm output; heads[l] (n_l,) the L2 norm of each head's context vector; neurons[l]
    (I_l,) the FFN activations after GELU."""

    channels: Tensor
    heads: list[Tensor]
    neurons: list[Tensor]


@torch.no_grad()
def activation_importance(model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]]) -> WidthImportance:
    """Minitron's activation-based importance, from forward passes only (no labels)."""
    a = adapter_for(model)
    layers = a.layers(model)
    channels = torch.zeros(a.get(model.config, "hidden"))
    structure = current_structure(model)
    heads = [torch.zeros(n) for n in structure["heads"]]
    neurons = [torch.zeros(n) for n in structure["intermediate"]]
    state: dict[str, Tensor] = {}
    hooks = []

    def on_norm(_m, _inp, out):  # out: (B, S, H)
        channels.add_((out.abs() * state["mask"]).sum((0, 1)).float().cpu())

    def on_context(i):
        def hook(_m, inp):  # inp[0]: (B, S, n*d), the heads' context vectors side by side
            x = inp[0]
            n = heads[i].numel()
            norms = x.view(*x.shape[:2], n, -1).norm(dim=-1)  # (B, S, n)
            heads[i].add_((norms * state["mask"]).sum((0, 1)).float().cpu())
        return hook

    def on_ffn(i):
        def hook(_m, inp):  # inp[0]: (B, S, I), the FFN activations (after GELU / the GLU gate)
            neurons[i].add_((inp[0].abs() * state["mask"]).sum((0, 1)).float().cpu())
        return hook

    for probe in a.residual_probes(model):
        hooks.append(probe.register_forward_hook(on_norm))
    for i, layer in enumerate(layers):
        hooks.append(a.head_out(layer).module.register_forward_pre_hook(on_context(i)))
        hooks.append(a.ffn_out(layer).module.register_forward_pre_hook(on_ffn(i)))
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for batch in batches:
            state["mask"] = batch["attention_mask"].unsqueeze(-1).to(torch.float32)  # (B, S, 1)
            tokens += int(batch["attention_mask"].sum())
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("activation_importance: no tokens in the calibration batches")
    return WidthImportance(channels / tokens, [h / tokens for h in heads], [f / tokens for f in neurons])


def _top(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores, sorted ascending (ties broken by lower index)."""
    k = min(k, scores.numel())
    order = sorted(range(scores.numel()), key=lambda j: (-float(scores[j]), j))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def _slice(linear: nn.Linear, rows: Tensor | None, cols: Tensor | None) -> nn.Linear:
    """A Linear keeping output rows `rows` and input columns `cols` (None = all)."""
    if rows is not None:
        linear = prune_linear_layer(linear, rows, dim=0)
    if cols is not None:
        linear = prune_linear_layer(linear, cols, dim=1)
    return linear


def _slice_norm(norm: nn.LayerNorm, idx: Tensor) -> nn.LayerNorm:
    new = nn.LayerNorm(len(idx), eps=norm.eps, bias=norm.bias is not None).to(norm.weight.dtype)
    new.weight.data.copy_(norm.weight.data[idx])
    if norm.bias is not None:
        new.bias.data.copy_(norm.bias.data[idx])
    return new


def _slice_embedding(emb: nn.Embedding, cols: Tensor, rows: Tensor | None = None) -> nn.Embedding:
    weight = emb.weight.data[:, cols] if rows is None else emb.weight.data[rows][:, cols]
    return nn.Embedding.from_pretrained(weight.clone(), freeze=False, padding_idx=emb.padding_idx)


_SLICERS = {
    EMB: lambda m, ch: _slice_embedding(m, ch),
    NORM: lambda m, ch: _slice_norm(m, ch),
    READ: lambda m, ch: _slice(m, None, ch),
    WRITE: lambda m, ch: _slice(m, ch, None),
    SQUARE: lambda m, ch: _slice(m, ch, ch),
}


def shrink_width(model: PreTrainedModel, importance: WidthImportance, hidden_size: int | None,
                 heads: int | None, intermediate_size: int | None) -> list[int]:
    """Keep the `hidden_size` most important residual channels, the `heads` most important
    heads of each layer and its `intermediate_size` most important FFN neurons (None: keep
    all of that kind). In place; returns the kept residual channels (teacher indices)."""
    a = adapter_for(model)
    cfg = model.config
    layers = a.layers(model)
    d = a.head_dim(layers[0])
    width = a.get(cfg, "hidden")
    H = hidden_size or width
    if H > width or H % d:
        raise ConfigError(f"params.yaml: student.hidden_size: {H} must be a multiple of the head size {d} "
                          f"and at most the teacher's {width}")
    a.check_width(cfg, H)
    max_heads = H // d
    n_heads = heads or max_heads
    if n_heads > max_heads:
        raise ConfigError(f"params.yaml: student.heads: {n_heads} heads of size {d} need a hidden size of at "
                          f"least {n_heads * d}; student.hidden_size is {H}")
    ch = _top(importance.channels, H)  # (H',) kept residual channels
    targets = a.width_targets(model)  # collected before any module is replaced
    for i, layer in enumerate(layers):
        n = a.num_heads(layer)
        kept_heads = _top(importance.heads[i], min(n_heads, n)).tolist()
        for slot in a.head_in(layer):  # rows of the kept heads (every block of a fused qkv), kept channels
            slot.replace(_slice(slot.module, head_rows(slot, n, d, kept_heads), ch))
        out = a.head_out(layer)
        out.replace(_slice(out.module, ch, head_rows(out, n, d, kept_heads)))
        a.set_num_heads(layer, len(kept_heads))
        nk = _top(importance.neurons[i], intermediate_size or a.ffn_out(layer).module.in_features).tolist()
        for slot in a.ffn_in(layer):
            slot.replace(_slice(slot.module, neuron_rows(slot, nk), ch))
        out = a.ffn_out(layer)
        out.replace(_slice(out.module, ch, torch.tensor(nk, dtype=torch.long)))
    for slot, kind in targets:
        slot.replace(_SLICERS[kind](slot.module, ch))
    structure = current_structure(model)
    a.set_width(cfg, H, max_heads, max(structure["intermediate"]))
    setattr(cfg, STRUCTURE_KEY, structure)
    return ch.tolist()


def trim_positions(model: PreTrainedModel, max_length: int) -> PreTrainedModel:
    """Keep the position embeddings of the first `max_length` positions: texts are truncated
    to that many tokens everywhere (training, export, serving), so the other rows are never
    read. RoBERTa-style tables start at an offset (pad_token_id + 1), kept as well. A no-op
    for relative (DeBERTa-v3) and rotary (ModernBERT) positions."""
    found = adapter_for(model).position_embeddings(model)
    if found is None:
        return model
    slot, offset = found
    table = slot.module
    n = min(max_length + offset, table.num_embeddings)
    slot.replace(nn.Embedding.from_pretrained(table.weight.data[:n].clone(), freeze=False,
                                              padding_idx=table.padding_idx))
    for name in ("position_ids", "token_type_ids"):  # (1, max_positions) id buffers
        buf = getattr(slot.parent, name, None)
        if isinstance(buf, Tensor) and buf.dim() == 2 and buf.shape[1] > n:
            setattr(slot.parent, name, buf[:, :n].clone())
    model.config.max_position_embeddings = n
    return model


@dataclass
class BuiltStudent:
    """A student and what distillation needs to relate it to its teacher: the teacher id of
    each student token id (`vocab_keep`, None = same vocabulary) and the teacher channel of
    each student channel (`channels`, None = same width)."""

    model: PreTrainedModel
    tokenizer: object
    vocab_keep: list[int] | None
    channels: list[int] | None
    info: dict


def build_student(teacher: PreTrainedModel, tokenizer, cfg, texts: list, max_length: int,
                  seed: int, batch_size: int = 32, truncation: str = "head") -> BuiltStudent:
    """The student `cfg` (params.yaml `student:`) describes, from a teacher and the training
    texts (used for the vocabulary and to score width importance; never eval data). `texts` may
    be (text, text_pair) tuples, or a split on disk (`data.SplitInputs`, read in batches: the
    builder then never holds the split); `truncation` is data.truncation.

    Order: copy layers -> trim the vocabulary -> score and shrink the width -> trim positions.
    `student.architecture: bilstm` builds a BiLSTM over the teacher's embeddings instead (bilstm.py).
    """
    if cfg.architecture == "bilstm":
        model, tokenizer, keep, info = build_bilstm_student(teacher, tokenizer, cfg, texts, max_length, seed)
        return BuiltStudent(model, tokenizer, keep, None, info)

    import numpy as np

    from distillery.training import collate, encode_texts, iter_batches
    from distillery.vocab import trim_vocabulary

    student = build_student_from_layers(teacher, cfg.layers)
    info: dict = {"layers": list(cfg.layers), "teacher_vocab": int(student.config.vocab_size)}
    keep = channels = None
    if cfg.trim_vocabulary:
        # head_tail keeps tokens from the end too: count every token, not only the first max_length.
        counted = max_length if truncation == "head" else 1_000_000
        student, tokenizer, keep = trim_vocabulary(student, tokenizer, texts, counted, cfg.vocab_min_frequency)
        info["vocab_size"] = len(keep)
    if cfg.hidden_size or cfg.heads or cfg.intermediate_size:
        rng = np.random.default_rng(seed)
        chosen = [idx for _, idx in zip(range(cfg.importance_batches), iter_batches(len(texts), batch_size, rng))]
        # Only the scored rows are tokenized (a split on disk reads only their row groups).
        rows = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        picked = texts.take(rows) if hasattr(texts, "take") else [texts[i] for i in rows]
        enc = encode_texts(tokenizer, picked, max_length, truncation)
        batches = [collate(enc, np.searchsorted(rows, idx), torch.device("cpu")) for idx in chosen]
        channels = shrink_width(student, activation_importance(student, batches), cfg.hidden_size, cfg.heads,
                                cfg.intermediate_size)
        info.update(hidden_size=len(channels), structure=dict(student.config.distillery_structure))
    if cfg.trim_positions:
        trim_positions(student, max_length)
    return BuiltStudent(student, tokenizer, keep, channels, info)


__all__ = ["BuiltStudent", "WidthImportance", "activation_importance", "build_student", "build_student_from_layers",
           "shrink_width",
           "trim_positions"]
