"""Student builders: a smaller BERT initialised from the teacher's own weights.

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
BERT modules derive d = hidden_size / num_attention_heads, so a student of width H'
holds at most H'/d heads per layer (further head pruning records per-layer counts in
`config.distillery_structure`, see pruning.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.pytorch_utils import prune_linear_layer

from distillery.config import ConfigError
from distillery.pruning import STRUCTURE_KEY, current_structure, encoder_layers, restore_structure


def build_student_from_layers(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """DistilBERT-style student: the teacher's embeddings, pooler, head and the chosen layers.

    Copying whole teacher layers starts the student close to the teacher's function, so
    KD converges in far fewer steps than from random init.
    """
    n_teacher = teacher.config.num_hidden_layers
    bad = [i for i in layers if i >= n_teacher]
    if bad:
        raise ConfigError(f"params.yaml: student.layers: {bad} out of range; the teacher has "
                          f"{n_teacher} layers (0..{n_teacher - 1})")
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    structure = getattr(teacher.config, STRUCTURE_KEY, None)
    if structure:
        config.distillery_structure = {k: [v[i] for i in layers] for k, v in structure.items()}
    student = AutoModelForSequenceClassification.from_config(config)
    restore_structure(student)
    # Map student layer j <- teacher layer layers[j]; everything else by identical name.
    prefix = "bert.encoder.layer."
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            if int(idx) in layers:
                state[f"{prefix}{layers.index(int(idx))}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    student.load_state_dict(state, strict=True)
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
    layers = encoder_layers(model)
    emb = model.base_model.embeddings
    channels = torch.zeros(model.config.hidden_size)
    heads = [torch.zeros(layer.attention.self.num_attention_heads) for layer in layers]
    neurons = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
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
        def hook(_m, _inp, out):  # out: (B, S, I) after the activation
            neurons[i].add_((out.abs() * state["mask"]).sum((0, 1)).float().cpu())
        return hook

    hooks.append(emb.LayerNorm.register_forward_hook(on_norm))
    for i, layer in enumerate(layers):
        hooks.append(layer.attention.output.LayerNorm.register_forward_hook(on_norm))
        hooks.append(layer.output.LayerNorm.register_forward_hook(on_norm))
        hooks.append(layer.attention.output.dense.register_forward_pre_hook(on_context(i)))
        hooks.append(layer.intermediate.register_forward_hook(on_ffn(i)))
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
    new = nn.LayerNorm(len(idx), eps=norm.eps).to(norm.weight.dtype)
    new.weight.data.copy_(norm.weight.data[idx])
    new.bias.data.copy_(norm.bias.data[idx])
    return new


def _slice_embedding(emb: nn.Embedding, cols: Tensor, rows: Tensor | None = None) -> nn.Embedding:
    weight = emb.weight.data[:, cols] if rows is None else emb.weight.data[rows][:, cols]
    return nn.Embedding.from_pretrained(weight.clone(), freeze=False, padding_idx=emb.padding_idx)


def shrink_width(model: PreTrainedModel, importance: WidthImportance, hidden_size: int | None,
                 heads: int | None, intermediate_size: int | None) -> list[int]:
    """Keep the `hidden_size` most important residual channels, the `heads` most important
    heads of each layer and its `intermediate_size` most important FFN neurons (None: keep
    all of that kind). In place; returns the kept residual channels (teacher indices)."""
    cfg = model.config
    layers = encoder_layers(model)
    d = layers[0].attention.self.attention_head_size
    H = hidden_size or cfg.hidden_size
    if H > cfg.hidden_size or H % d:
        raise ConfigError(f"params.yaml: student.hidden_size: {H} must be a multiple of the head size {d} "
                          f"and at most the teacher's {cfg.hidden_size}")
    max_heads = H // d
    n_heads = heads or max_heads
    if n_heads > max_heads:
        raise ConfigError(f"params.yaml: student.heads: {n_heads} heads of size {d} need a hidden size of at "
                          f"least {n_heads * d}; student.hidden_size is {H}")
    ch = _top(importance.channels, H)  # (H',) kept residual channels
    emb = model.base_model.embeddings
    emb.word_embeddings = _slice_embedding(emb.word_embeddings, ch)
    emb.position_embeddings = _slice_embedding(emb.position_embeddings, ch)
    emb.token_type_embeddings = _slice_embedding(emb.token_type_embeddings, ch)
    emb.LayerNorm = _slice_norm(emb.LayerNorm, ch)
    for i, layer in enumerate(layers):
        attn = layer.attention.self
        kept_heads = _top(importance.heads[i], min(n_heads, attn.num_attention_heads))
        hd = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept_heads.tolist()])  # (n'*d,)
        attn.query, attn.key, attn.value = (_slice(m, hd, ch) for m in (attn.query, attn.key, attn.value))
        attn.num_attention_heads, attn.all_head_size = len(kept_heads), len(kept_heads) * d
        out = layer.attention.output
        out.dense, out.LayerNorm = _slice(out.dense, ch, hd), _slice_norm(out.LayerNorm, ch)
        nk = _top(importance.neurons[i], intermediate_size or layer.intermediate.dense.out_features)
        layer.intermediate.dense = _slice(layer.intermediate.dense, nk, ch)
        layer.output.dense, layer.output.LayerNorm = _slice(layer.output.dense, ch, nk), _slice_norm(layer.output.LayerNorm, ch)
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None:
        pooler.dense = _slice(pooler.dense, ch, ch)
    model.classifier = _slice(model.classifier, None, ch)
    structure = current_structure(model)
    cfg.hidden_size, cfg.num_attention_heads = H, max_heads
    cfg.intermediate_size = max(structure["intermediate"])
    setattr(cfg, STRUCTURE_KEY, structure)
    return ch.tolist()


def trim_positions(model: PreTrainedModel, max_length: int) -> PreTrainedModel:
    """Keep the first `max_length` position embeddings: texts are truncated to that many
    tokens everywhere (training, export, serving), so the other rows are never read."""
    emb = model.base_model.embeddings
    n = min(max_length, emb.position_embeddings.num_embeddings)
    emb.position_embeddings = nn.Embedding.from_pretrained(emb.position_embeddings.weight.data[:n].clone(), freeze=False)
    emb.position_ids = emb.position_ids[:, :n].clone()
    emb.token_type_ids = emb.token_type_ids[:, :n].clone()
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
    be (text, text_pair) tuples; `truncation` is data.truncation.

    Order: copy layers -> trim the vocabulary -> score and shrink the width -> trim positions.
    `student.architecture: bilstm` builds a BiLSTM over the teacher's embeddings instead (bilstm.py).
    """
    if cfg.architecture == "bilstm":
        from distillery.bilstm import build_bilstm_student

        return build_bilstm_student(teacher, tokenizer, cfg, texts, max_length, seed)

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
        enc = encode_texts(tokenizer, texts, max_length, truncation)
        rng = np.random.default_rng(seed)
        batches = [collate(enc, idx, torch.device("cpu"))
                   for _, idx in zip(range(cfg.importance_batches), iter_batches(len(enc), batch_size, rng))]
        channels = shrink_width(student, activation_importance(student, batches), cfg.hidden_size, cfg.heads,
                                cfg.intermediate_size)
        info.update(hidden_size=len(channels), structure=dict(student.config.distillery_structure))
    if cfg.trim_positions:
        trim_positions(student, max_length)
    return BuiltStudent(student, tokenizer, keep, channels, info)


__all__ = ["BuiltStudent", "WidthImportance", "activation_importance", "build_student", "activation_importance", "build_student_from_layers", "shrink_width",
           "trim_positions"]
