"""Structured pruning of encoder classifiers: remove whole attention heads and FFN neurons.

Importance is first-order Taylor (Molchanov et al. 2019, "Importance Estimation for
Neural Network Pruning"): the loss change from zeroing a group S of parameters is, to
first order, |sum_{s in S} w_s * dL/dw_s|. Groups are
  head h of layer l:    its rows of query/key/value (weights and biases; the three blocks
                        of a fused qkv projection) + its columns of the attention output
  neuron j of layer l:  row j of the FFN input projection (+ bias; both halves of a GLU's
                        [input; gate]) + column j of the FFN output projection.
Where those projections live is the family's adapter's business (distillery/architectures).
For heads this is, in spirit, the gradient head importance of Michel et al. 2019 ("Are
Sixteen Heads Really Better than One?"), whose per-layer L2 normalisation we also use so
that heads of different layers can be ranked against each other.

The removal is physical (smaller nn.Linear layers), unlike `torch.nn.utils.prune`, so the
model gets faster and smaller. A stock BERT config holds one head count and one FFN size,
so the per-layer shapes are recorded in `config.distillery_structure` and rebuilt by
`restore_structure` before loading saved weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import prune_linear_layer

from distillery.architectures import Slot, adapter_for

STRUCTURE_KEY = "distillery_structure"  # config field: {"heads": [...], "intermediate": [...]}

LossFn = Callable[[nn.Module, Mapping[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Importance:
    """Per-layer scores: heads[l] is (n_heads_l,), L2-normalised within the layer;
    neurons[l] is (n_neurons_l,), raw (FFN neurons are only ranked within their layer)."""

    heads: list[Tensor]
    neurons: list[Tensor]


@dataclass(frozen=True)
class PruningPlan:
    """What survives: per layer, the sorted indices of the kept heads and FFN neurons."""

    heads_keep: list[list[int]]
    neurons_keep: list[list[int]]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layer stack (`model.bert.encoder.layer` for BERT; see the adapters)."""
    return adapter_for(model).layers(model)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def current_structure(model: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN neurons per layer, read from the modules themselves."""
    a = adapter_for(model)
    layers = a.layers(model)
    return {
        "heads": [a.num_heads(layer) for layer in layers],
        "intermediate": [int(a.ffn_out(layer).module.in_features) for layer in layers],
    }


# --------------------------------------------------------------------------- importance

def _scored_params(adapter, layer: nn.Module) -> list[tuple[str, int, nn.Parameter]]:
    """(group, blocks, parameter) of one layer: "head_w"/"head_b" rows per head, "head_out"
    columns per head, "ffn_w"/"ffn_b" rows per neuron, "ffn_out" columns per neuron."""
    out = []
    for slot in adapter.head_in(layer):
        out.append(("head_w", slot.blocks, slot.module.weight))
        if slot.module.bias is not None:
            out.append(("head_b", slot.blocks, slot.module.bias))
    out.append(("head_out", 1, adapter.head_out(layer).module.weight))
    for slot in adapter.ffn_in(layer):
        out.append(("ffn_w", slot.blocks, slot.module.weight))
        if slot.module.bias is not None:
            out.append(("ffn_b", slot.blocks, slot.module.bias))
    out.append(("ffn_out", 1, adapter.ffn_out(layer).module.weight))
    return out


def _layer_scores(adapter, layer: nn.Module, grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Signed sum of w*g per head and per neuron for one layer and one batch."""
    n, d = adapter.num_heads(layer), adapter.head_dim(layer)
    scored = _scored_params(adapter, layer)
    ref = scored[0][2]
    heads = torch.zeros(n, dtype=ref.dtype, device=ref.device)
    neurons = None
    for (group, blocks, p), g in zip(scored, grads):
        wg = p.detach() * g
        if group == "head_w":      # rows b*n*d + h*d .. + d
            heads += wg.view(blocks, n, d, -1).sum((0, 2, 3))
        elif group == "head_b":
            heads += wg.view(blocks, n, d).sum((0, 2))
        elif group == "head_out":  # columns h*d .. (h+1)*d
            heads += wg.view(wg.shape[0], n, d).sum((0, 2))
        elif group == "ffn_w":     # rows b*I + j
            s = wg.view(blocks, -1, wg.shape[-1]).sum((0, 2))
            neurons = s if neurons is None else neurons + s
        elif group == "ffn_b":
            neurons = neurons + wg.view(blocks, -1).sum(0)
        else:                      # ffn_out: column j
            neurons = neurons + wg.sum(0)
    return heads, neurons


def compute_importance(model: nn.Module, batches: Iterable[Mapping[str, Tensor]],
                       loss_fn: LossFn) -> Importance:
    """First-order Taylor importance of every head and FFN neuron (see module docstring).

    Per batch b and group S: |sum_{s in S} w_s * dL_b/dw_s|, averaged over batches (the
    absolute value is taken per batch, as Michel et al. take it per example, so opposite
    signs across batches do not cancel). `loss_fn(model, batch)` returns a scalar; batch
    tensors must already be on the model's device. The model runs in eval mode (dropout
    off, so the scores are deterministic). Gradients are taken with `torch.autograd.grad`,
    so `.grad`, weights and `requires_grad` flags are left as they were.
    """
    a = adapter_for(model)
    layers = a.layers(model)
    per_layer = [[p for _, _, p in _scored_params(a, layer)] for layer in layers]
    bounds = [0]
    for ps in per_layer:
        bounds.append(bounds[-1] + len(ps))
    params = [p for ps in per_layer for p in ps]
    was_training, flags = model.training, [p.requires_grad for p in params]
    structure = current_structure(model)
    heads = [torch.zeros(n) for n in structure["heads"]]
    neurons = [torch.zeros(n) for n in structure["intermediate"]]
    n_batches = 0
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)  # frozen parameters still need a gradient to be scored
        for batch in batches:
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(model, batch), params, allow_unused=True)
            # None = the loss does not depend on that parameter: a zero gradient
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            for i, layer in enumerate(layers):
                h, f = _layer_scores(a, layer, grads[bounds[i]:bounds[i + 1]])
                heads[i] += h.abs().float().cpu()
                neurons[i] += f.abs().float().cpu()
            n_batches += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("compute_importance: no batches given")
    heads = [h / n_batches for h in heads]
    # Michel et al.: normalise per layer so that global ranking is not dominated by the
    # layer whose gradients happen to be largest.
    heads = [h / h.norm().clamp_min(1e-12) for h in heads]
    return Importance(heads=heads, neurons=[f / n_batches for f in neurons])


# --------------------------------------------------------------------------- plan

def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _plan_heads(scores: list[Tensor], fraction: float) -> list[list[int]]:
    """Global ranking across layers; the last head of a layer is never removed."""
    total = sum(len(s) for s in scores)
    to_remove = round(fraction * total)
    ranked = sorted((float(v), l, h)
                    for l, s in enumerate(scores) for h, v in enumerate(s.tolist()))
    keep = [set(range(len(s))) for s in scores]
    for _, l, h in ranked:  # ties broken by (layer, head) index: deterministic
        if to_remove == 0:
            break
        if len(keep[l]) > 1:
            keep[l].discard(h)
            to_remove -= 1
    return [sorted(k) for k in keep]


def _plan_neurons(scores: list[Tensor], fraction: float) -> list[list[int]]:
    """Per layer: drop the round(fraction * n) lowest-scoring neurons, keep at least one."""
    plan = []
    for s in scores:
        values = s.tolist()
        n_drop = min(round(fraction * len(values)), len(values) - 1)
        ranked = sorted(range(len(values)), key=lambda j: (values[j], j))
        plan.append(sorted(ranked[n_drop:]))
    return plan


def plan_pruning(importance: Importance, head_fraction: float, ffn_fraction: float) -> PruningPlan:
    """Choose what to keep: the least important heads (globally, >= 1 per layer) and, in
    each layer, the least important FFN neurons are removed. Python's `round` decides
    counts (half to even: round(2.5) == 2)."""
    _check_fraction("head_fraction", head_fraction)
    _check_fraction("ffn_fraction", ffn_fraction)
    if len(importance.heads) != len(importance.neurons):
        raise ValueError("importance: heads and neurons cover a different number of layers")
    return PruningPlan(heads_keep=_plan_heads(importance.heads, head_fraction),
                       neurons_keep=_plan_neurons(importance.neurons, ffn_fraction))


# --------------------------------------------------------------------------- apply

def _prune_linear(layer: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """prune_linear_layer, keeping the dtype and requires_grad of the original layer."""
    new = prune_linear_layer(layer, index, dim=dim).to(dtype=layer.weight.dtype)
    for name, p in new.named_parameters():
        p.requires_grad_(getattr(layer, name).requires_grad)
    return new


def _check_keep(what: str, layer: int, keep: list[int], n: int) -> None:
    if not keep:
        raise ValueError(f"plan: layer {layer} keeps no {what}")
    if list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"plan: layer {layer} {what} {keep} must be sorted, distinct, in [0, {n})")


def head_rows(slot: Slot, n_heads: int, head_dim: int, keep: list[int]) -> Tensor:
    """Output rows of the kept heads in a (possibly fused) projection: for each of its
    blocks b, rows b*n*d + h*d .. b*n*d + (h+1)*d of every kept head h, in order."""
    per_block = n_heads * head_dim
    return torch.cat([torch.arange(b * per_block + h * head_dim, b * per_block + (h + 1) * head_dim)
                      for b in range(slot.blocks) for h in keep])


def neuron_rows(slot: Slot, keep: list[int]) -> Tensor:
    """Output rows of the kept FFN neurons: row b*I + j of every block b (GLU: input and gate)."""
    n = slot.module.out_features // slot.blocks
    return torch.tensor([b * n + j for b in range(slot.blocks) for j in keep], dtype=torch.long)


def _prune_heads(adapter, layer: nn.Module, keep: list[int]) -> None:
    n, d = adapter.num_heads(layer), adapter.head_dim(layer)
    for slot in adapter.head_in(layer):
        slot.replace(_prune_linear(slot.module, head_rows(slot, n, d, keep), dim=0))
    out = adapter.head_out(layer)
    out.replace(_prune_linear(out.module, head_rows(Slot(out.parent, out.name), n, d, keep), dim=1))
    # the head size (and so the 1/sqrt(d) scaling) is unchanged; forward reshapes with
    # view(..., -1, head_size), so only the count attributes follow the new number of heads.
    adapter.set_num_heads(layer, len(keep))


def _prune_neurons(adapter, layer: nn.Module, keep: list[int]) -> None:
    for slot in adapter.ffn_in(layer):
        slot.replace(_prune_linear(slot.module, neuron_rows(slot, keep), dim=0))
    out = adapter.ffn_out(layer)
    out.replace(_prune_linear(out.module, torch.tensor(keep, dtype=torch.long), dim=1))


def apply_pruning(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Physically remove the heads and neurons the plan drops (in place; returns `model`)
    and record the new per-layer shapes in `model.config.distillery_structure`.
    The config's head count is left alone: the head size is derived from it."""
    a = adapter_for(model)
    layers = a.layers(model)
    if len(plan.heads_keep) != len(layers) or len(plan.neurons_keep) != len(layers):
        raise ValueError(f"plan covers {len(plan.heads_keep)}/{len(plan.neurons_keep)} layers, "
                         f"model has {len(layers)}")
    structure = current_structure(model)
    for i in range(len(layers)):
        _check_keep("heads", i, plan.heads_keep[i], structure["heads"][i])
        _check_keep("neurons", i, plan.neurons_keep[i], structure["intermediate"][i])
    for i, layer in enumerate(layers):
        _prune_heads(a, layer, plan.heads_keep[i])
        _prune_neurons(a, layer, plan.neurons_keep[i])
    setattr(model.config, STRUCTURE_KEY, current_structure(model))
    return model


def step_fractions(fraction: float, steps: int) -> list[float]:
    """Per-step fractions (each of what is left at that step) that remove `fraction` of the
    original in `steps` equal steps: after step s, 1 - fraction * s / steps is left
    (iterative pruning with recovery in between, Michel et al. 2019 sec. 4; Zhu & Gupta 2017)."""
    _check_fraction("fraction", fraction)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    left = [1.0 - fraction * s / steps for s in range(steps + 1)]
    return [1.0 - left[s] / left[s - 1] for s in range(1, steps + 1)]


def drop_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """Remove whole encoder layers (in place; returns `model`), e.g. the ones that matter
    least after distillation (Sajjad et al. 2023, "On the effect of dropping layers")."""
    n = len(encoder_layers(model))
    if any(i < 0 or i >= n for i in drop) or len(set(drop)) >= n:
        raise ValueError(f"drop_layers: {drop} must be distinct indices in [0, {n}) leaving at least one layer")
    adapter_for(model).select_layers(model, [i for i in range(n) if i not in set(drop)])
    if getattr(model.config, STRUCTURE_KEY, None):
        setattr(model.config, STRUCTURE_KEY, current_structure(model))
    return model


def restore_structure(model: nn.Module) -> nn.Module:
    """Shrink a freshly built model to the shapes in `config.distillery_structure`, so that
    the saved weights of a pruned model load with `load_state_dict(..., strict=True)`.
    The shrunk weights are placeholders. No-op when the config has no structure."""
    structure = getattr(model.config, STRUCTURE_KEY, None)
    if not structure:
        return model
    heads, inter = structure["heads"], structure["intermediate"]
    n_layers = len(encoder_layers(model))
    if len(heads) != n_layers or len(inter) != n_layers:
        raise ValueError(f"config.{STRUCTURE_KEY} describes {len(heads)}/{len(inter)} layers, "
                         f"model has {n_layers}")
    # Keeping the first k heads/neurons is as good as any: only the shapes matter here.
    plan = PruningPlan(heads_keep=[list(range(int(n))) for n in heads],
                       neurons_keep=[list(range(int(n))) for n in inter])
    return apply_pruning(model, plan)


__all__ = ["Importance", "PruningPlan", "STRUCTURE_KEY", "apply_pruning", "compute_importance",
           "count_parameters", "current_structure", "drop_layers", "encoder_layers", "head_rows",
           "neuron_rows", "plan_pruning",
           "restore_structure", "step_fractions"]
