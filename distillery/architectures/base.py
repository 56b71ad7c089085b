"""The adapter interface: where a family's layers, attention, FFN, norms and embeddings live.

Every stage that reaches inside an encoder (student building, width slicing, structured
pruning, reloading pruned shapes, position trimming, ONNX export) asks the family's adapter
instead of naming modules itself, so adding a family is one file in this package plus its
registry entry (see registry.py) and its row in tests/test_architectures.py.

Projections are described as `Slot`s (a Linear reached as an attribute of a parent module,
so it can be replaced by a sliced copy). A fused projection holds several equal blocks along
its output rows: ModernBERT's `Wqkv` is [q; k; v] (3 blocks of n_heads * head_dim rows),
its GLU `Wi` is [input; gate] (2 blocks of intermediate rows). Head h of a slot with B
blocks owns rows b*n*d + h*d .. b*n*d + (h+1)*d for every block b; FFN neuron j owns rows
b*I + j. The generic code in pruning.py and student.py handles every family with that rule.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Slot:
    """A module held as `parent.<name>` (usually an nn.Linear); `blocks`: fused equal blocks
    along the output rows (1 = a plain projection)."""

    parent: nn.Module
    name: str
    blocks: int = 1

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.name)

    def replace(self, new: nn.Module) -> None:
        setattr(self.parent, self.name, new)


# Kinds of residual-width targets (see Adapter.width_targets):
EMB = "emb"        # nn.Embedding whose columns are residual channels
NORM = "norm"      # LayerNorm over the residual stream
READ = "in"        # Linear reading the residual stream: slice its input columns
WRITE = "out"      # Linear writing the residual stream: slice its output rows
SQUARE = "inout"   # Linear from the residual stream to itself (poolers, head dense): both


def _attr(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


class Adapter:
    """One encoder family. Subclasses set the class attributes and override the accessors
    whose module names differ; the defaults describe BERT."""

    name = "bert"
    model_types: tuple[str, ...] = ()
    layers_path = "encoder.layer"              # under model.base_model
    config_keys = {"layers": "num_hidden_layers", "heads": "num_attention_heads",
                   "hidden": "hidden_size", "intermediate": "intermediate_size"}
    tokenizer_model = "WordPiece"              # what vocabulary trimming has to handle
    # onnxruntime.transformers' BERT fusions (graph_optimization: ort_transformers) are safe on
    # this family's exported graph (checked per family in tests/test_architectures.py)
    ort_fusion = True

    # ------------------------------------------------------------------ config
    def get(self, config, key: str) -> int:
        return int(getattr(config, self.config_keys[key]))

    def set(self, config, key: str, value: int) -> None:
        setattr(config, self.config_keys[key], int(value))

    # ------------------------------------------------------------------ layer stack
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _attr(model.base_model, self.layers_path)

    def select_layers(self, model: nn.Module, indices: list[int]) -> nn.Module:
        """Keep the layers `indices` in that order (copies, so a layer may repeat); in place."""
        old = self.layers(model)
        # the copies keep sharing the model's config (attention implementation, etc.)
        new = nn.ModuleList([copy.deepcopy(old[i], {id(model.config): model.config}) for i in indices])
        parent_path, _, attr = self.layers_path.rpartition(".")
        setattr(_attr(model.base_model, parent_path) if parent_path else model.base_model, attr, new)
        for i, layer in enumerate(new):  # transformers keys caches and layer types by index
            for m in layer.modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = i
        self.set(model.config, "layers", len(new))
        self.after_select(model, indices)
        return model

    def after_select(self, model: nn.Module, indices: list[int]) -> None:
        """Family-specific bookkeeping after the layer stack changed (e.g. per-layer types)."""

    # ------------------------------------------------------------------ attention
    def attention(self, layer: nn.Module) -> nn.Module:
        """The module holding the head count (and computing attention)."""
        return layer.attention.self

    def num_heads(self, layer: nn.Module) -> int:
        return int(self.attention(layer).num_attention_heads)

    def head_dim(self, layer: nn.Module) -> int:
        return int(self.attention(layer).attention_head_size)

    def set_num_heads(self, layer: nn.Module, n: int) -> None:
        attn = self.attention(layer)
        attn.num_attention_heads = n
        attn.all_head_size = n * self.head_dim(layer)

    def head_in(self, layer: nn.Module) -> list[Slot]:
        """Projections whose output rows are per head (q, k, v; or one fused qkv)."""
        a = self.attention(layer)
        return [Slot(a, "query"), Slot(a, "key"), Slot(a, "value")]

    def head_out(self, layer: nn.Module) -> Slot:
        """The attention output projection (its input columns are per head)."""
        return Slot(layer.attention.output, "dense")

    # ------------------------------------------------------------------ FFN
    def ffn_in(self, layer: nn.Module) -> list[Slot]:
        return [Slot(layer.intermediate, "dense")]

    def ffn_out(self, layer: nn.Module) -> Slot:
        """Its input is the FFN activation (one column per neuron)."""
        return Slot(layer.output, "dense")

    # ------------------------------------------------------------------ residual stream
    def embeddings(self, model: nn.Module) -> nn.Module:
        return model.base_model.embeddings

    def residual_probes(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose output is the (normalised) residual stream, (B, S, H): Minitron's
        channel importance is read there."""
        probes = [self.embeddings(model).LayerNorm]
        for layer in self.layers(model):
            probes += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
        return probes

    def width_targets(self, model: nn.Module) -> list[tuple[Slot, str]]:
        """Every module outside the q/k/v/out/FFN projections that touches the residual
        stream, with how to slice it (EMB, NORM, READ, WRITE, SQUARE)."""
        emb = self.embeddings(model)
        targets = [(Slot(emb, n), EMB) for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
                   if getattr(emb, n, None) is not None]
        targets.append((Slot(emb, "LayerNorm"), NORM))
        for layer in self.layers(model):
            targets += [(Slot(layer.attention.output, "LayerNorm"), NORM), (Slot(layer.output, "LayerNorm"), NORM)]
        return targets + self.head_targets(model)

    def head_targets(self, model: nn.Module) -> list[tuple[Slot, str]]:
        """The pooler and classifier (BERT: pooler.dense, then classifier)."""
        pooler = getattr(model.base_model, "pooler", None)
        out = [(Slot(pooler, "dense"), SQUARE)] if pooler is not None else []
        return out + [(Slot(model, "classifier"), READ)]

    def check_width(self, config, hidden: int) -> None:
        """Raise ConfigError when this family cannot be `hidden` wide (before anything is sliced)."""

    def set_width(self, config, hidden: int, heads: int, intermediate: int) -> None:
        """Record the new residual width, head count (max per layer) and FFN size."""
        self.set(config, "hidden", hidden)
        self.set(config, "heads", heads)
        self.set(config, "intermediate", intermediate)

    # ------------------------------------------------------------------ positions
    def position_embeddings(self, model: nn.Module) -> tuple[Slot, int] | None:
        """The absolute position table and the index of position 0 in it (RoBERTa starts
        at pad_token_id + 1); None when positions are relative or rotary."""
        emb = self.embeddings(model)
        if getattr(emb, "position_embeddings", None) is None:
            return None
        return Slot(emb, "position_embeddings"), 0

    # ------------------------------------------------------------------ export
    def export_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra forward inputs built in-graph for ONNX export: BERT would otherwise slice its
        512-long id buffers with `[:, :seq]`, which exports as Min(512, seq) and breaks ORT's
        symbolic shape inference."""
        return {"position_ids": torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0),  # (1, S)
                "token_type_ids": torch.zeros_like(input_ids)}  # (B, S): single-segment inputs


class UnsupportedArchitecture(ValueError):
    """A model_type no adapter handles."""
