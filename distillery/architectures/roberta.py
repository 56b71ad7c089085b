"""RoBERTa (and XLM-R, CamemBERT: the same modules under other model_types).

Differs from BERT in its classification head (dense + out_proj instead of pooler +
classifier), its byte-level BPE / SentencePiece tokenizer, and its positions: they start at
pad_token_id + 1 (ids are counted from the first non-pad token), so a 512-token text reads
rows pad+1 .. pad+512 of the position table (514 rows for pad_token_id 1).
"""

import torch

from distillery.architectures.base import READ, SQUARE, Adapter, Slot


class RobertaAdapter(Adapter):
    name = "roberta"
    model_types = ("roberta", "xlm-roberta", "camembert")
    tokenizer_model = "BPE"  # byte-level BPE (RoBERTa); Unigram for XLM-R / CamemBERT

    def head_targets(self, model):
        return [(Slot(model.classifier, "dense"), SQUARE), (Slot(model.classifier, "out_proj"), READ)]

    def position_embeddings(self, model):
        emb = self.embeddings(model)
        return Slot(emb, "position_embeddings"), int(emb.padding_idx) + 1

    def export_inputs(self, input_ids):
        # positions are derived from the pad mask in-graph (create_position_ids_from_input_ids)
        return {"token_type_ids": torch.zeros_like(input_ids)}  # (B, S)
