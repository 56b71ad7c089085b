"""ModernBERT: pre-norm layers (attn_norm -> attn -> +, mlp_norm -> mlp -> +; layer 0 has no
attn_norm since the embeddings end with a norm), a fused `Wqkv` ([q; k; v], 3 blocks), a GLU
FFN whose `Wi` holds [input; gate] (2 blocks) and `Wo`, rotary positions (nothing to trim),
global and sliding-window layers listed in `config.layer_types`, a final norm, and a
head (dense + act + norm) before the classifier. Tokenizer: byte-level BPE."""

from torch import nn

from distillery.architectures.base import EMB, NORM, READ, SQUARE, Adapter, Slot


class ModernBertAdapter(Adapter):
    name = "modernbert"
    model_types = ("modernbert",)
    layers_path = "layers"
    tokenizer_model = "BPE"
    ort_fusion = False  # ORT's BERT fusions fail on its graph (symbolic shape inference: IndexError)

    def after_select(self, model, indices):
        cfg = model.config
        cfg.layer_types = [cfg.layer_types[i] for i in indices]
        # A stock ModernBERT has attn_norm = Identity in layer 0 only: keep that shape so the
        # student stays a plain Hugging Face directory (the embedding norm already normalises).
        for j, layer in enumerate(self.layers(model)):
            if j == 0 and not isinstance(layer.attn_norm, nn.Identity):
                layer.attn_norm = nn.Identity()
            elif j > 0 and isinstance(layer.attn_norm, nn.Identity):
                layer.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)

    def attention(self, layer):
        return layer.attn

    def num_heads(self, layer):
        return layer.attn.Wqkv.out_features // (3 * layer.attn.head_dim)

    def head_dim(self, layer):
        return int(layer.attn.head_dim)

    def set_num_heads(self, layer, n):
        pass  # forward reshapes Wqkv's output with view(..., 3, -1, head_dim): the count follows the rows

    def head_in(self, layer):
        return [Slot(layer.attn, "Wqkv", blocks=3)]

    def head_out(self, layer):
        return Slot(layer.attn, "Wo")

    def ffn_in(self, layer):
        return [Slot(layer.mlp, "Wi", blocks=2)]

    def ffn_out(self, layer):
        return Slot(layer.mlp, "Wo")

    def embeddings(self, model):
        return model.base_model.embeddings

    def residual_probes(self, model):
        probes = [self.embeddings(model).norm]
        for layer in self.layers(model):
            probes += [m for m in (layer.attn_norm, layer.mlp_norm) if isinstance(m, nn.LayerNorm)]
        return probes + [model.base_model.final_norm]

    def width_targets(self, model):
        emb = self.embeddings(model)
        targets = [(Slot(emb, "tok_embeddings"), EMB), (Slot(emb, "norm"), NORM)]
        for layer in self.layers(model):
            if isinstance(layer.attn_norm, nn.LayerNorm):
                targets.append((Slot(layer, "attn_norm"), NORM))
            targets.append((Slot(layer, "mlp_norm"), NORM))
        targets.append((Slot(model.base_model, "final_norm"), NORM))
        return targets + [(Slot(model.head, "dense"), SQUARE), (Slot(model.head, "norm"), NORM),
                          (Slot(model, "classifier"), READ)]

    def position_embeddings(self, model):
        return None  # rotary

    def export_inputs(self, input_ids):
        return {}
