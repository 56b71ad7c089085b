"""DeBERTa-v2 / DeBERTa-v3: disentangled attention (query_proj/key_proj/value_proj, plus
pos_key_proj/pos_query_proj when share_att_key is false), relative position embeddings in
the encoder (`rel_embeddings`, normalised by `encoder.LayerNorm`), usually no absolute
positions (position_biased_input false), a ContextPooler + classifier head, SentencePiece
(Unigram) tokenizers. Attention is always the eager implementation."""

import torch

from distillery.architectures.base import EMB, NORM, READ, SQUARE, WRITE, Adapter, Slot
from distillery.config import ConfigError


class DebertaV2Adapter(Adapter):
    name = "deberta_v2"
    model_types = ("deberta-v2",)
    tokenizer_model = "Unigram"

    def head_in(self, layer):
        a = layer.attention.self
        names = ["query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj"]
        return [Slot(a, n) for n in names if getattr(a, n, None) is not None]

    def width_targets(self, model):
        if getattr(model.base_model.encoder, "conv", None) is not None:
            raise ConfigError("params.yaml: student width slicing does not support DeBERTa's convolution layer "
                              "(conv_kernel_size > 0); keep student.hidden_size null")
        emb, enc = self.embeddings(model), model.base_model.encoder
        targets = [(Slot(emb, n), EMB) for n in ("position_embeddings", "token_type_embeddings")
                   if getattr(emb, n, None) is not None]
        if getattr(emb, "embed_proj", None) is not None:  # embedding_size != hidden_size
            targets.append((Slot(emb, "embed_proj"), WRITE))
        else:
            targets.append((Slot(emb, "word_embeddings"), EMB))
        targets.append((Slot(emb, "LayerNorm"), NORM))
        if getattr(enc, "rel_embeddings", None) is not None:
            targets.append((Slot(enc, "rel_embeddings"), EMB))
        if getattr(enc, "LayerNorm", None) is not None:
            targets.append((Slot(enc, "LayerNorm"), NORM))
        for layer in self.layers(model):
            targets += [(Slot(layer.attention.output, "LayerNorm"), NORM), (Slot(layer.output, "LayerNorm"), NORM)]
        return targets + [(Slot(model.pooler, "dense"), SQUARE), (Slot(model, "classifier"), READ)]

    def set_width(self, config, hidden, heads, intermediate):
        if getattr(config, "embedding_size", None) in (None, config.hidden_size):
            config.embedding_size = hidden
        config.pooler_hidden_size = hidden
        super().set_width(config, hidden, heads, intermediate)

    def export_inputs(self, input_ids):
        return {"position_ids": torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0),  # (1, S)
                "token_type_ids": torch.zeros_like(input_ids)}
