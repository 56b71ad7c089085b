"""Text (or text pair) -> token ids, with one truncation rule shared by training and serving.

Works on a `tokenizers.Tokenizer` (a transformers fast tokenizer's `backend_tokenizer`, or the
served model's `tokenizer.json`), so the ONNX serving path stays free of torch and transformers
and both paths cut long inputs identically. Inputs are strings, or (text, text_pair) tuples for
sentence-pair tasks.

Truncation to `max_length` tokens, special tokens included:
  - head:      keep the first tokens of each text;
  - head_tail: keep the first quarter and the last three quarters of each text's budget
               (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification": head 128 +
               tail 382 of 510 was their best cut on long reviews; the end of a review often
               holds its verdict).
For a pair the budget is shared "longest first" (as Hugging Face does): tokens are taken from
the longer text until both fit, so a short question keeps all of its tokens; on a tie the first
text keeps the extra token.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

TextInput = Union[str, tuple[str, str]]
TRUNCATIONS = ("head", "head_tail")


def split_budget(a: int, b: int, budget: int) -> tuple[int, int]:
    """Tokens kept of two texts of lengths a and b under `budget` (longest first)."""
    if a + b <= budget:
        return a, b
    half = budget // 2
    if a <= half:
        return a, budget - a
    if b <= budget - math.ceil(budget / 2):
        return budget - b, b
    return math.ceil(budget / 2), budget // 2


def kept_positions(n: int, keep: int, truncation: str) -> list[int]:
    """Indices (in order) of the `keep` tokens kept of a text of `n` tokens."""
    if keep >= n:
        return list(range(n))
    if truncation == "head":
        return list(range(keep))
    head = math.ceil(keep / 4)
    return list(range(head)) + list(range(n - (keep - head), n))


def _cut(ids: list[int], type_ids: list[int], seq_ids: list[int | None], max_length: int,
         truncation: str) -> tuple[list[int], list[int]]:
    """Drop content tokens (never special ones) until at most `max_length` remain."""
    if len(ids) <= max_length:
        return ids, type_ids
    spans = [[i for i, s in enumerate(seq_ids) if s == k] for k in (0, 1)]
    specials = len(ids) - len(spans[0]) - len(spans[1])
    budget = max(0, max_length - specials)
    keep_a, keep_b = split_budget(len(spans[0]), len(spans[1]), budget)
    kept = set(i for i, s in enumerate(seq_ids) if s is None)
    for span, keep in ((spans[0], keep_a), (spans[1], keep_b)):
        kept.update(span[j] for j in kept_positions(len(span), keep, truncation))
    order = sorted(kept)
    return [ids[i] for i in order], [type_ids[i] for i in order]


def encode_batch(tokenizer, inputs: Sequence[TextInput], max_length: int,
                 truncation: str = "head") -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, token type ids) per input, special tokens added, cut to `max_length`.

    `tokenizer` is a `tokenizers.Tokenizer`; its own truncation and padding are switched off
    (callers pad per batch, and the cut is ours).
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if tokenizer.truncation is not None:
        tokenizer.no_truncation()
    if tokenizer.padding is not None:
        tokenizer.no_padding()
    items = [tuple(x) if isinstance(x, (tuple, list)) else x for x in inputs]
    ids, types = [], []
    for enc in tokenizer.encode_batch(items, add_special_tokens=True):
        i, t = _cut(enc.ids, enc.type_ids, enc.sequence_ids, max_length, truncation)
        ids.append(i)
        types.append(t)
    return ids, types


def is_pair_input(inputs: Sequence[TextInput]) -> bool:
    return bool(inputs) and isinstance(inputs[0], (tuple, list))


__all__ = ["TRUNCATIONS", "TextInput", "encode_batch", "is_pair_input", "kept_positions", "split_budget"]


# Families whose position ids start after the padding index (RoBERTa's `padding_idx + 1`), so
# `max_position_embeddings` overstates the usable length by that offset.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def max_input_length(config, tokenizer=None) -> int | None:
    """The most tokens (special ones included) a model takes: its position table less any offset,
    and never more than the tokenizer's declared `model_max_length`; None when unbounded."""
    limits = []
    n = getattr(config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
            n -= (getattr(config, "pad_token_id", None) or 0) + 1
        limits.append(n)
    m = getattr(tokenizer, "model_max_length", None)
    if isinstance(m, int) and 0 < m < 1_000_000:  # transformers' "no limit" is a huge sentinel
        limits.append(m)
    return min(limits) if limits else None


def check_max_length(max_length: int, config, tokenizer=None, teacher: str = "the teacher") -> None:
    """Refuse a `data.max_length` the teacher cannot take (a `ConfigError` naming the key)."""
    from distillery.config import ConfigError

    limit = max_input_length(config, tokenizer)
    if limit is not None and max_length > limit:
        raise ConfigError(f"params.yaml: data.max_length: {max_length} tokens is more than teacher {teacher!r} "
                          f"takes ({limit}, from its position embeddings); set data.max_length <= {limit}")


def input_meta(data_cfg) -> dict:
    """What a model directory records about its inputs (distillery.json), so the served model
    tokenizes and cuts them as training did and knows which columns to read."""
    columns = ["text"] + (["text_pair"] if data_cfg.text_pair_column else [])
    return {"max_length": data_cfg.max_length, "truncation": data_cfg.truncation, "input_columns": columns}
