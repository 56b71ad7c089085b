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
The result depends only on the texts, the options and the seed: the same run reproduces it
byte for byte, and DVC tracks it as a stage output. The teacher labels every new text
(soft_targets stage); augmented texts carry no gold label.
"""

from __future__ import annotations

import numpy as np

MASK = "[MASK]"


def augment_texts(texts: list[str], copies: int, *, mask_prob: float, replace_prob: float, ngram_prob: float,
                  max_ngram: int, seed: int) -> tuple[list[str], np.ndarray]:
    """`copies` augmented versions of each text (rows that came out unchanged or empty are
    dropped). Returns (new texts, index of the source text of each)."""
    if copies <= 0 or not texts:
        return [], np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    words = [t.split() for t in texts]
    pool = [w for ws in words for w in ws]  # sampling a position = sampling by frequency
    out, source = [], []
    for _ in range(copies):
        for i, ws in enumerate(words):
            if not ws:
                continue
            u = rng.random(len(ws))
            new = [MASK if x < mask_prob else (pool[rng.integers(len(pool))] if x < mask_prob + replace_prob else w)
                   for w, x in zip(ws, u)]
            if rng.random() < ngram_prob:
                n = int(rng.integers(1, max_ngram + 1))
                if n < len(new):
                    start = int(rng.integers(0, len(new) - n + 1))
                    new = new[start:start + n]
            if new != ws:
                out.append(" ".join(new))
                source.append(i)
    return out, np.asarray(source, dtype=np.int64)


__all__ = ["MASK", "augment_texts"]
