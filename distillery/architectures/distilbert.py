"""DistilBERT: its own module and config names (q_lin/k_lin/v_lin/out_lin, ffn.lin1/lin2,
sa_layer_norm/output_layer_norm; n_layers, n_heads, dim, hidden_dim), no token types, and a
pre_classifier + classifier head."""

import torch

from distillery.architectures.base import EMB, NORM, READ, SQUARE, Adapter, Slot


class DistilBertAdapter(Adapter):
    name = "distilbert"
    model_types = ("distilbert",)
    layers_path = "transformer.layer"
    ort_fusion = False  # the fused graph breaks ORT's static int8 quantizer (a MatMul left uncalibrated)
    config_keys = {"layers": "n_layers", "heads": "n_heads", "hidden": "dim", "intermediate": "hidden_dim"}

    def attention(self, layer):
        return layer.attention

    def num_heads(self, layer):
        return int(layer.attention.n_heads)

    def set_num_heads(self, layer, n):
        layer.attention.n_heads = n  # forward reshapes with view(..., -1, head_size)

    def head_in(self, layer):
        a = layer.attention
        return [Slot(a, "q_lin"), Slot(a, "k_lin"), Slot(a, "v_lin")]

    def head_out(self, layer):
        return Slot(layer.attention, "out_lin")

    def ffn_in(self, layer):
        return [Slot(layer.ffn, "lin1")]

    def ffn_out(self, layer):
        return Slot(layer.ffn, "lin2")

    def residual_probes(self, model):
        probes = [self.embeddings(model).LayerNorm]
        for layer in self.layers(model):
            probes += [layer.sa_layer_norm, layer.output_layer_norm]
        return probes

    def width_targets(self, model):
        emb = self.embeddings(model)
        targets = [(Slot(emb, "word_embeddings"), EMB), (Slot(emb, "position_embeddings"), EMB),
                   (Slot(emb, "LayerNorm"), NORM)]
        for layer in self.layers(model):
            targets += [(Slot(layer, "sa_layer_norm"), NORM), (Slot(layer, "output_layer_norm"), NORM)]
        return targets + [(Slot(model, "pre_classifier"), SQUARE), (Slot(model, "classifier"), READ)]

    def export_inputs(self, input_ids):
        return {"position_ids": torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)}  # (1, S)
