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

import numpy as np

MASK = "[MASK]"


def augment_texts(texts: list, copies: int, *, mask_prob: float, replace_prob: float, ngram_prob: float,
                  max_ngram: int, seed: int) -> tuple[list, np.ndarray]:
    """`copies` augmented versions of each text, or of each (text, text_pair) tuple (rows that
    came out unchanged or empty are dropped). Returns (new texts, index of the source text of each)."""
    if copies <= 0 or not texts:
        return [], np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pairs = isinstance(texts[0], (tuple, list))
    sides = [[t[0].split(), t[1].split()] if pairs else [t.split()] for t in texts]
    pool = [w for row in sides for ws in row for w in ws]  # sampling a position = sampling by frequency
    out, source = [], []
    for _ in range(copies):
        for i, row in enumerate(sides):
            if not all(row):
                continue
            new = [_change(ws, rng, pool, mask_prob, replace_prob, ngram_prob, max_ngram) for ws in row]
            if new != row:
                out.append((" ".join(new[0]), " ".join(new[1])) if pairs else " ".join(new[0]))
                source.append(i)
    return out, np.asarray(source, dtype=np.int64)


def _change(ws: list[str], rng: np.random.Generator, pool: list[str], mask_prob: float, replace_prob: float,
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


__all__ = ["MASK", "augment_texts"]
