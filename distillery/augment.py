"""Data augmentation for distillation (Tang et al. 2019, "Distilling Task-Specific Knowledge
from BERT into Simple Neural Networks", sec. 3.3; TinyBERT does the same with a masked LM).

A distilled student learns from the teacher's soft targets, which exist for any text, not
only labelled ones: new texts near the training distribution give the student more of the
teacher's function to match. Each augmented text is made from one training text by
  - masking:      each word becomes [MASK] with probability mask_prob;
  - replacement:  else, each word becomes a random training word with probability
                  replace_prob (drawn by corpus frequency; Tang et al. use words of the same
                  part of speech, which needs a tagger this project does not ship);
  - n-gram:       then, with probability ngram_prob, the text is cut to a random n-gram,
                  n uniform in [1, max_ngram].
Texts are split on whitespace (SST-2 and most review data are already tokenized by spaces).
Sentence pairs ((text, text_pair) tuples): each side is changed as above, independently (an
n-gram cut applies to each side on its own), with replacement words drawn from both sides; a
pair comes out when either side changed. The result depends only on the texts, the options and the seed: the same run reproduces it
byte for byte, and DVC tracks it as a stage output. The teacher labels every new text
(soft_targets stage); augmented texts carry no gold label.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

MASK = "[MASK]"


def augment_texts(texts: list, copies: int, *, mask_prob: float, replace_prob: float, ngram_prob: float,
                  max_ngram: int, seed: int) -> tuple[list, np.ndarray]:
    """`copies` augmented versions of each text, or of each (text, text_pair) tuple (rows that
    came out unchanged or empty are dropped). Returns (new texts, index of the source text of each)."""
    out, source = [], []
    for rows, src in augment_batches(lambda: iter([texts]), copies, mask_prob=mask_prob, replace_prob=replace_prob,
                                     ngram_prob=ngram_prob, max_ngram=max_ngram, seed=seed):
        out += rows
        source.append(src)
    return out, (np.concatenate(source) if source else np.zeros(0, dtype=np.int64))


def augment_batches(batches: Callable[[], Iterable[list]], copies: int, *, mask_prob: float, replace_prob: float,
                    ngram_prob: float, max_ngram: int, seed: int) -> Iterator[tuple[list, np.ndarray]]:
    """`augment_texts` over rows that arrive in batches: `batches()` yields the training rows in
    order and is called once for the word pool, then once per copy. Yields (new rows, index of
    each one's source row) per batch; the result is the same as `augment_texts` on all rows.

    Memory: one batch of rows, the distinct words, and 4 bytes per training word (the pool that
    replacement draws from, held as word ids), not the rows themselves.
    """
    if copies <= 0:
        return
    rng = np.random.default_rng(seed)
    pool = _WordPool()
    for rows in batches():
        pool.add(rows)
    pool.freeze()
    for _ in range(copies):
        offset = 0
        for rows in batches():
            out, source = [], []
            for i, t in enumerate(rows):
                row = [t[0].split(), t[1].split()] if pool.pairs else [t.split()]
                if not all(row):
                    continue
                new = [_change(ws, rng, pool, mask_prob, replace_prob, ngram_prob, max_ngram) for ws in row]
                if new != row:
                    out.append((" ".join(new[0]), " ".join(new[1])) if pool.pairs else " ".join(new[0]))
                    source.append(offset + i)
            offset += len(rows)
            yield out, np.asarray(source, dtype=np.int64)


class _WordPool:
    """Every word of the training rows, in order (sampling a position = sampling by frequency),
    stored as int32 ids into the distinct words."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.parts: list[np.ndarray] = []
        self.pairs: bool | None = None

    def add(self, rows: list) -> None:
        if self.pairs is None and len(rows):
            self.pairs = isinstance(rows[0], (tuple, list))
        sides = (s for t in rows for s in (t if self.pairs else (t,)))
        ids = self.ids
        self.parts.append(np.fromiter((ids.setdefault(w, len(ids)) for s in sides for w in s.split()), dtype=np.int32))

    def freeze(self) -> None:
        self.positions = np.concatenate(self.parts) if self.parts else np.zeros(0, np.int32)
        self.words, self.parts = list(self.ids), []

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i) -> str:
        return self.words[self.positions[i]]


def _change(ws: list[str], rng: np.random.Generator, pool: _WordPool, mask_prob: float, replace_prob: float,
            ngram_prob: float, max_ngram: int) -> list[str]:
    """One augmented version of the words `ws` (mask, replace, then maybe an n-gram cut)."""
    u = rng.random(len(ws))
    new = [MASK if x < mask_prob else (pool[rng.integers(len(pool))] if x < mask_prob + replace_prob else w)
           for w, x in zip(ws, u)]
    if rng.random() < ngram_prob:
        n = int(rng.integers(1, max_ngram + 1))
        if n < len(new):
            start = int(rng.integers(0, len(new) - n + 1))
            new = new[start:start + n]
    return new


__all__ = ["MASK", "augment_batches", "augment_texts"]
