"""Tiny random-init teachers of every supported encoder family, built offline: a transformers
config with tiny sizes and a tokenizer trained with the `tokenizers` library on the given texts
(WordPiece-style word vocabulary for the BERT-like families, byte-level BPE for RoBERTa and
ModernBERT, Unigram for DeBERTa-v3), saved as a Hugging Face directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import SPECIALS

FAMILIES = ("bert", "roberta", "distilbert", "electra", "deberta_v2", "modernbert")
# Families whose tokenizer is not WordPiece (byte-level BPE or Unigram).
NON_WORDPIECE = {"roberta", "deberta_v2", "modernbert"}
BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _word_vocab(texts: list[str]) -> dict[str, int]:
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    return {tok: i for i, tok in enumerate(SPECIALS + words)}


def _byte_bpe(texts: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return tok.get_vocab(), merges


def make_tokenizer(family: str, texts: list[str]):
    """A tokenizer of the family's kind, trained on `texts` (nothing downloaded)."""
    import transformers as T

    if family in ("bert", "electra", "distilbert"):
        cls = {"bert": T.BertTokenizerFast, "electra": T.ElectraTokenizerFast,
               "distilbert": T.DistilBertTokenizerFast}[family]
        return cls(vocab=_word_vocab(texts), do_lower_case=True)
    if family == "roberta":
        vocab, merges = _byte_bpe(texts)
        return T.RobertaTokenizer(vocab=vocab, merges=merges)
    if family == "modernbert":  # ModernBERT checkpoints ship a plain fast tokenizer with a template
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

        vocab, merges = _byte_bpe(texts)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
        return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                         sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                         model_input_names=["input_ids", "attention_mask"])
    if family == "deberta_v2":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, unk_token="[UNK]", show_progress=False,
                                                               special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
        pieces = [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]
        return T.DebertaV2Tokenizer(vocab=pieces, unk_id=1)
    raise ValueError(family)


def make_config(family: str, tokenizer, *, hidden: int = 32, layers: int = 3, heads: int = 4, intermediate: int = 64,
                max_positions: int = 128, dropout: float = 0.1):
    """A tiny config of the family, its special-token ids taken from `tokenizer`."""
    import transformers as T

    vocab = len(tokenizer)
    ids = dict(pad_token_id=tokenizer.pad_token_id)
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=intermediate, max_position_embeddings=max_positions,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **ids)
    if family == "bert":
        return T.BertConfig(**common)
    if family == "roberta":  # positions start at pad_token_id + 1
        return T.RobertaConfig(**{**common, "max_position_embeddings": max_positions + tokenizer.pad_token_id + 1},
                               type_vocab_size=1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "electra":  # embeddings narrower than the encoder, joined by embeddings_project
        return T.ElectraConfig(**common, embedding_size=hidden // 4)
    if family == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=intermediate,
                                  max_position_embeddings=max_positions, dropout=dropout, attention_dropout=dropout, **ids)
    if family == "deberta_v2":  # DeBERTa-v3 style: relative positions only, shared attention keys
        return T.DebertaV2Config(**common, relative_attention=True, position_buckets=16, max_relative_positions=-1,
                                 pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                                 position_biased_input=False, type_vocab_size=0)
    if family == "modernbert":  # global attention every 2nd layer, the others a 8-token sliding window
        return T.ModernBertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=intermediate,
                                  max_position_embeddings=max_positions, global_attn_every_n_layers=2,
                                  local_attention=8, embedding_dropout=dropout, mlp_dropout=dropout,
                                  attention_dropout=dropout, bos_token_id=tokenizer.cls_token_id,
                                  eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id,
                                  sep_token_id=tokenizer.sep_token_id, **ids)
    raise ValueError(family)


def make_family_teacher(out_dir: Path, family: str, texts: list[str], *, seed: int = 0, **sizes) -> Path:
    """A random-init encoder of `family` (no classification head: the teacher stage fine-tunes
    one) with a tokenizer trained on `texts`, saved as a Hugging Face directory."""
    import torch
    from transformers import AutoModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(family, texts)
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    AutoModel.from_config(make_config(family, tokenizer, **sizes)).save_pretrained(out_dir)
    return out_dir


def make_family_classifier(family: str, texts: list[str], *, seed: int = 0, **sizes):
    """(model, tokenizer): a random-init sequence classifier of `family`, in eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = make_tokenizer(family, texts)
    torch.manual_seed(seed)
    config = make_config(family, tokenizer, **sizes)
    config.num_labels = 3
    return AutoModelForSequenceClassification.from_config(config).eval(), tokenizer
