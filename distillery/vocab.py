"""Vocabulary trimming: keep only the word pieces the training data uses.

In a small BERT the word-embedding matrix dominates the bytes (30,522 x 384 of the
packaged MiniLM's 22.7M parameters); SST-2's 67k training phrases use about 11.6k word
pieces. Trimming shrinks the embedding matrix and the tokenizer together, with the
same id mapping, so the student and its tokenizer stay one self-contained directory.

Why training texts tokenize exactly as before: WordPiece takes, at each position of a
word, the longest piece in the vocabulary. Every piece the original tokenizer chose for
a training word is kept, and no piece is added, so the longest match is unchanged.
Unseen words still map safely: every single character and its `##` continuation that
the old vocabulary had for printable ASCII is kept, so any ASCII word splits into
pieces; a word with a character outside the kept set becomes [UNK], as BERT does for
characters it never had.
"""

from __future__ import annotations

import json
import string
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch import nn

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def token_counts(tokenizer, texts: list[str], max_length: int) -> Counter:
    """How often each token id occurs in `texts`, tokenized as training tokenizes them."""
    counts: Counter = Counter()
    for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]:
        counts.update(ids)
    return counts


def plan_vocabulary(tokenizer, counts: Counter, min_frequency: int = 1) -> list[int]:
    """Old ids to keep, ascending: the special tokens, the ASCII character pieces (so no
    ASCII word becomes [UNK]) and every token seen at least `min_frequency` times."""
    vocab = tokenizer.get_vocab()  # token -> id
    keep = {vocab[t] for t in SPECIAL_TOKENS if t in vocab}
    keep.update(getattr(tokenizer, "all_special_ids", []))
    for ch in string.printable.strip():
        for piece in (ch, f"##{ch}"):
            if piece in vocab:
                keep.add(vocab[piece])
    keep.update(i for i, c in counts.items() if c >= min_frequency)
    return sorted(keep)


def _remap_tokenizer_json(data: dict, old_to_new: dict[int, int], id_to_token: dict[int, str]) -> dict:
    """tokenizer.json with the vocabulary reduced to the kept ids, renumbered in order."""
    model = data["model"]
    if model.get("type") != "WordPiece":
        raise ValueError(f"vocabulary trimming supports WordPiece tokenizers (BERT family), "
                         f"not {model.get('type')!r}")
    model["vocab"] = {id_to_token[old]: new for old, new in old_to_new.items()}
    data["added_tokens"] = [{**t, "id": old_to_new[t["id"]]} for t in data.get("added_tokens", [])
                            if t["id"] in old_to_new]
    post = data.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [old_to_new[i] for i in spec["ids"]]
    for key in ("cls", "sep"):  # BertProcessing form: ["[CLS]", 101]
        if isinstance(post.get(key), list):
            post[key][1] = old_to_new[post[key][1]]
    if data.get("padding"):
        data["padding"]["pad_id"] = old_to_new[data["padding"]["pad_id"]]
    return data


def trim_tokenizer(tokenizer, keep: list[int]):
    """A tokenizer of the same class and settings whose vocabulary is `keep` (old ids),
    renumbered 0..len(keep)-1 in the same order."""
    from transformers import AutoTokenizer

    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    old_to_new = {old: new for new, old in enumerate(keep)}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        data = _remap_tokenizer_json(json.loads(path.read_text()), old_to_new, id_to_token)
        path.write_text(json.dumps(data, ensure_ascii=False))
        vocab_txt = Path(tmp) / "vocab.txt"
        if vocab_txt.exists():
            vocab_txt.write_text("".join(id_to_token[old] + "\n" for old in keep))
        trimmed = AutoTokenizer.from_pretrained(tmp)
    if len(trimmed) != len(keep):
        raise RuntimeError(f"trimmed tokenizer has {len(trimmed)} tokens, expected {len(keep)}")
    return trimmed


def trim_embeddings(model, keep: list[int]):
    """Keep rows `keep` of the word-embedding matrix, in order (in place; returns `model`)."""
    emb = model.get_input_embeddings()
    idx = torch.tensor(keep, dtype=torch.long)
    pad = model.config.pad_token_id
    new_pad = keep.index(pad) if pad is not None and pad in keep else None
    model.set_input_embeddings(nn.Embedding.from_pretrained(emb.weight.data[idx].clone(), freeze=False,
                                                            padding_idx=new_pad))
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = new_pad
    return model


def trim_vocabulary(model, tokenizer, texts: list[str], max_length: int, min_frequency: int = 1):
    """Trim model and tokenizer to the pieces `texts` (training data only) use.
    Returns (model, tokenizer, keep) where keep[new_id] = old_id."""
    keep = plan_vocabulary(tokenizer, token_counts(tokenizer, texts, max_length), min_frequency)
    return trim_embeddings(model, keep), trim_tokenizer(tokenizer, keep), keep


__all__ = ["plan_vocabulary", "token_counts", "trim_embeddings", "trim_tokenizer", "trim_vocabulary"]
