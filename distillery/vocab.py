"""Vocabulary trimming: keep only the tokens the training data uses.

In a small encoder the word-embedding matrix dominates the bytes (30,522 x 384 of the
packaged MiniLM's 22.7M parameters); SST-2's 67k training phrases use about 11.6k word
pieces. Trimming shrinks the embedding matrix and the tokenizer together, with the
same id mapping, so the student and its tokenizer stay one self-contained directory.

The promise, for every tokenizer model: each training text tokenizes to the same pieces
as before (ids renumbered by `keep`), and any other text still tokenizes without error.
What must be kept for that depends on the tokenizer model, so each has a small strategy
(`WordPieceTrim`, `BpeTrim`, `UnigramTrim`), chosen from tokenizer.json's `model.type`;
the special tokens, added tokens, post-processor and padding are handled once, here.

- WordPiece takes, at each position of a word, the longest piece in the vocabulary.
  Every chosen piece is kept and none is added, so the longest match is unchanged.
- BPE applies merges by rank. Keeping a merge only when its two parts and its result are
  kept, with every part of every merge that can build a kept token kept too (closure),
  leaves every symbol of a training word's merge sequence in the vocabulary: at each
  step the merge the original applied is still there and still has the lowest rank among
  those that apply, so the same merges fire in the same order.
- Unigram picks the highest-scoring segmentation (Viterbi). The trimmed lattice keeps the
  chosen pieces with their scores, so the chosen path survives; any path the trimmed
  lattice has was already available (or worse, see `UnigramTrim`), so it still wins.
"""

from __future__ import annotations

import json
import string
import tempfile
from collections import Counter
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from torch import nn

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_ASCII = set(string.printable.strip())
_BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]  # SentencePiece/BPE byte_fallback pieces

Texts = list[str] | list[tuple[str, str]]


# --------------------------------------------------------------------------- strategies

class TokenizerModelTrim:
    """What one tokenizer model (tokenizer.json `model`) needs kept, and how its vocabulary is
    rewritten. `data` is the whole tokenizer.json; `model` is its `model` section."""

    def fallback(self, data: dict, seen_chars: set[str]) -> set[str]:
        """Tokens to keep so that text the training data never showed still tokenizes."""
        raise NotImplementedError

    def closure(self, model: dict, tokens: set[str]) -> set[str]:
        """`tokens` plus what the model needs to still produce them."""
        return tokens

    def model_ids(self, model: dict) -> set[int]:
        """Ids of the model's own vocabulary (other ids are added tokens outside it)."""
        return set(model["vocab"].values())

    def remap(self, model: dict, old_to_new: dict[int, int]) -> None:
        """Reduce `model` (in place) to the ids in `old_to_new`, renumbered."""
        raise NotImplementedError


class WordPieceTrim(TokenizerModelTrim):
    """BERT's WordPiece. Fallback: the printable-ASCII characters and their `##` forms, so
    any ASCII word splits into kept pieces; a word with another character becomes [UNK]."""

    def fallback(self, data: dict, seen_chars: set[str]) -> set[str]:
        model = data["model"]
        prefix = model.get("continuing_subword_prefix") or "##"
        return {model.get("unk_token")} | {p for c in _ASCII for p in (c, prefix + c)}

    def remap(self, model: dict, old_to_new: dict[int, int]) -> None:
        model["vocab"] = {t: old_to_new[i] for t, i in model["vocab"].items() if i in old_to_new}


class BpeTrim(TokenizerModelTrim):
    """Byte-level BPE (RoBERTa, GPT-2, ModernBERT) and character BPE.

    Fallback: byte-level models keep all 256 byte symbols, so no text has an unknown
    symbol; with `byte_fallback` the <0xNN> pieces; otherwise the single characters seen
    in training plus printable ASCII, and the unk token. Closure: every part of every merge
    that builds a kept token (recursively), so a kept token's whole merge chain is kept."""

    def fallback(self, data: dict, seen_chars: set[str]) -> set[str]:
        model = data["model"]
        if "ByteLevel" in json.dumps(data.get("pre_tokenizer")):
            return set(ByteLevel.alphabet()) | {model.get("unk_token")}
        keep = {model.get("unk_token")}
        if model.get("byte_fallback"):
            keep.update(_BYTE_PIECES)
        prefix, suffix = model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or ""
        for c in _ASCII | seen_chars:
            keep.update((c, prefix + c, c + suffix, prefix + c + suffix))
        return keep

    def _merges(self, model: dict) -> list[tuple[str, str, str]]:
        """(left, right, result) per merge, in rank order."""
        cut = len(model.get("continuing_subword_prefix") or "")
        out = []
        for m in model["merges"]:
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            out.append((a, b, a + b[cut:]))
        return out

    def closure(self, model: dict, tokens: set[str]) -> set[str]:
        makers: dict[str, list[tuple[str, str]]] = {}
        for a, b, result in self._merges(model):
            makers.setdefault(result, []).append((a, b))
        keep, todo = set(tokens), list(tokens)
        while todo:
            for part in (p for pair in makers.get(todo.pop(), ()) for p in pair):
                if part not in keep:
                    keep.add(part)
                    todo.append(part)
        return keep

    def remap(self, model: dict, old_to_new: dict[int, int]) -> None:
        kept = {t for t, i in model["vocab"].items() if i in old_to_new}
        model["merges"] = [m for m, (a, b, r) in zip(model["merges"], self._merges(model))
                           if a in kept and b in kept and r in kept]
        model["vocab"] = {t: old_to_new[model["vocab"][t]] for t in kept}


class UnigramTrim(TokenizerModelTrim):
    """SentencePiece Unigram (DeBERTa-v3, XLM-R, T5).

    Fallback: the unk piece; the <0xNN> pieces when the model has `byte_fallback`; the
    single-character pieces of the characters seen in training and of printable ASCII.
    Closure: the lowest-scoring piece. Why: a character with no single-character piece
    gets an unk node scored `min(score) - 10` (tokenizers' Unigram); keeping the minimum
    keeps that score, so every unk node scores what it did, and an unk node the trimmed
    lattice gains (where a dropped single-character piece was) scores below that piece,
    so no new path can beat the old best one."""

    def fallback(self, data: dict, seen_chars: set[str]) -> set[str]:
        model = data["model"]
        keep = {model["vocab"][model["unk_id"]][0]} if model.get("unk_id") is not None else set()
        if model.get("byte_fallback"):
            keep.update(_BYTE_PIECES)
        return keep | _ASCII | seen_chars

    def closure(self, model: dict, tokens: set[str]) -> set[str]:
        return tokens | {min(model["vocab"], key=lambda piece: piece[1])[0]} if model["vocab"] else tokens

    def model_ids(self, model: dict) -> set[int]:
        return set(range(len(model["vocab"])))  # a list of [piece, score]: the id is the position

    def remap(self, model: dict, old_to_new: dict[int, int]) -> None:
        pieces = sorted((old_to_new[i], p) for i, p in enumerate(model["vocab"]) if i in old_to_new)
        if [n for n, _ in pieces] != list(range(len(pieces))):
            raise RuntimeError("Unigram pieces must keep the first ids (they are list positions)")
        model["vocab"] = [p for _, p in pieces]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[model["unk_id"]]


STRATEGIES: dict[str, TokenizerModelTrim] = {"WordPiece": WordPieceTrim(), "BPE": BpeTrim(),
                                             "Unigram": UnigramTrim()}


def _strategy(model: dict) -> TokenizerModelTrim:
    kind = model.get("type")
    if kind not in STRATEGIES:
        raise ValueError(f"vocabulary trimming supports tokenizer models {sorted(STRATEGIES)}, not {kind!r}")
    return STRATEGIES[kind]


# --------------------------------------------------------------------------- planning

def token_counts(tokenizer, texts: Texts, max_length: int | None = None) -> Counter:
    """How often each token id occurs in `texts` (strings, or (text, text_pair) tuples tokenized
    as pairs). Texts are counted whole: `max_length` (kept for callers) does not cut them, so
    whichever truncation training uses (head, or head + tail), the tokens it sees are counted."""
    counts: Counter = Counter()
    # A split on disk (data.SplitInputs) is counted a batch at a time: never all its texts at once.
    for chunk in (texts.batches() if hasattr(texts, "batches") else [texts]):
        singles = [t for t in chunk if isinstance(t, str)]
        pairs = [t for t in chunk if not isinstance(t, str)]
        batches = [tokenizer(singles, verbose=False)["input_ids"]] if singles else []
        if pairs:
            first, second = (list(col) for col in zip(*pairs))
            batches.append(tokenizer(first, second, verbose=False)["input_ids"])
        for batch in batches:
            for ids in batch:
                counts.update(ids)
    return counts


def plan_vocabulary(tokenizer, counts: Counter, min_frequency: int = 1) -> list[int]:
    """Old ids to keep (keep[new_id] = old_id): the special and added special tokens, every
    token seen at least `min_frequency` times, what the tokenizer model needs so unseen
    text still tokenizes (its fallback) and so kept tokens still come out (its closure).
    Ascending, model tokens first, except that the pad token keeps its id when it can
    (RoBERTa-family models derive position ids from it)."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model, trim = data["model"], _strategy(data["model"])
    vocab = tokenizer.get_vocab()  # token -> id, added tokens included
    id_to_token = {i: t for t, i in vocab.items()}
    seen = {id_to_token[i] for i, c in counts.items() if c >= min_frequency and i in id_to_token}
    tokens = seen | {t for t in SPECIAL_TOKENS if t in vocab}
    tokens |= {t["content"] for t in data.get("added_tokens", []) if t.get("special")}
    tokens |= trim.fallback(data, {c for t in seen for c in t})
    tokens = trim.closure(model, tokens)
    ids = {vocab[t] for t in tokens if t in vocab} | set(getattr(tokenizer, "all_special_ids", []))
    inside = trim.model_ids(model)
    keep = sorted(ids & inside) + sorted(ids - inside)
    pad = tokenizer.pad_token_id
    if pad in inside and pad in ids and pad < len(ids & inside) and keep[pad] != pad:
        keep.remove(pad)
        keep.insert(pad, pad)
    return keep


# --------------------------------------------------------------------------- applying

def _remap_post_processor(post: dict | None, old_to_new: dict[int, int]) -> None:
    if not post:
        return
    for spec in (post.get("special_tokens") or {}).values():  # TemplateProcessing
        spec["ids"] = [old_to_new[i] for i in spec["ids"]]
    for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: ["[CLS]", 101]
        if isinstance(post.get(key), list):
            post[key][1] = old_to_new[post[key][1]]
    for inner in post.get("processors") or []:  # Sequence
        _remap_post_processor(inner, old_to_new)


def _remap_tokenizer_json(data: dict, old_to_new: dict[int, int]) -> dict:
    """tokenizer.json with the vocabulary reduced to the kept ids, renumbered."""
    model = data["model"]
    _strategy(model).remap(model, old_to_new)
    data["added_tokens"] = [{**t, "id": old_to_new[t["id"]]} for t in data.get("added_tokens", [])
                            if t["id"] in old_to_new]
    _remap_post_processor(data.get("post_processor"), old_to_new)
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
        data = _remap_tokenizer_json(json.loads(path.read_text()), old_to_new)
        path.write_text(json.dumps(data, ensure_ascii=False))
        config = Path(tmp) / "tokenizer_config.json"
        cfg = json.loads(config.read_text()) if config.exists() else {}
        if "added_tokens_decoder" in cfg:
            cfg["added_tokens_decoder"] = {str(old_to_new[int(i)]): t for i, t in cfg["added_tokens_decoder"].items()
                                           if int(i) in old_to_new}
            config.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))
        vocab_txt = Path(tmp) / "vocab.txt"
        if vocab_txt.exists():
            vocab_txt.write_text("".join(id_to_token[old] + "\n" for old in keep))
        trimmed = AutoTokenizer.from_pretrained(tmp)
    if len(trimmed) != len(keep):
        raise RuntimeError(f"trimmed tokenizer has {len(trimmed)} tokens, expected {len(keep)}")
    return trimmed


def trim_embeddings(model, keep: list[int]):
    """Keep rows `keep` of the word-embedding matrix, in order (in place; returns `model`).

    The config's token ids (pad, bos, eos, cls, sep) follow their rows (None when not kept).
    A module that derives position ids from the pad id (RoBERTa's embeddings: positions start
    at padding_idx + 1) cannot have it moved: `plan_vocabulary` keeps it in place, and a
    `keep` that moves it is refused here."""
    emb = model.get_input_embeddings()
    idx = torch.tensor(keep, dtype=torch.long)
    pad = model.config.pad_token_id
    new_pad = keep.index(pad) if pad is not None and pad in keep else None
    if new_pad != pad:
        for name, module in model.named_modules():
            if not isinstance(module, nn.Embedding) and getattr(module, "padding_idx", None) == pad:
                raise ValueError(f"{name} derives position ids from the pad id {pad}; the vocabulary "
                                 f"plan moves it to {new_pad}: keep the pad token at its id")
    model.set_input_embeddings(nn.Embedding.from_pretrained(emb.weight.data[idx].clone(), freeze=False,
                                                            padding_idx=new_pad))
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = new_pad
    new_id = {old: new for new, old in enumerate(keep)}
    for key, value in model.config.to_dict().items():  # bos/eos/cls/sep ids (ModernBERT, RoBERTa) follow too
        if key.endswith("_token_id") and key != "pad_token_id" and isinstance(value, int):
            setattr(model.config, key, new_id.get(value))
    return model


def trim_vocabulary(model, tokenizer, texts: Texts, max_length: int, min_frequency: int = 1):
    """Trim model and tokenizer to the tokens `texts` (training data only; strings or
    (text, text_pair) tuples) use. Returns (model, tokenizer, keep) where keep[new_id] = old_id."""
    keep = plan_vocabulary(tokenizer, token_counts(tokenizer, texts, max_length), min_frequency)
    return trim_embeddings(model, keep), trim_tokenizer(tokenizer, keep), keep


__all__ = ["STRATEGIES", "TokenizerModelTrim", "plan_vocabulary", "token_counts", "trim_embeddings", "trim_tokenizer",
           "trim_vocabulary"]
