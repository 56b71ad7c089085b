"""Paired statistics of two classifiers scored on the same labelled rows (pure; numpy + scipy).

Kept in one place so it can be merged with the gate's own paired statistics later.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def paired_accuracy(truth, pred_a, pred_b, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Accuracy of A and B on the same rows, and whether B differs from A.

    - difference = acc(B) - acc(A), with a percentile bootstrap CI (rows resampled in pairs, so
      the correlation between the two models' errors is kept);
    - McNemar's exact test: under H0 the discordant rows (one model right, the other wrong) split
      50/50, so p = two-sided binomial test of b_only on b_only + a_only (Edwards; exact for small n).
    """
    truth, pred_a, pred_b = (np.asarray(x, dtype=object) for x in (truth, pred_a, pred_b))
    n = len(truth)
    if not (len(pred_a) == len(pred_b) == n):
        raise ValueError(f"paired rows differ in length: {n}, {len(pred_a)}, {len(pred_b)}")
    if n == 0:
        return {"n": 0, "accuracy_a": None, "accuracy_b": None, "difference": None, "ci": [None, None],
                "confidence": confidence, "a_only_correct": 0, "b_only_correct": 0, "mcnemar_p": None}
    ok_a, ok_b = pred_a == truth, pred_b == truth
    a_only, b_only = int(np.sum(ok_a & ~ok_b)), int(np.sum(ok_b & ~ok_a))
    diff_rows = ok_b.astype(float) - ok_a.astype(float)  # per-row difference; its mean is acc(B) - acc(A)
    rng = np.random.default_rng(seed)
    means = diff_rows[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(b_only, discordant, 0.5).pvalue)
    return {"n": n, "accuracy_a": float(ok_a.mean()), "accuracy_b": float(ok_b.mean()),
            "difference": float(diff_rows.mean()), "ci": [float(lo), float(hi)], "confidence": confidence,
            "a_only_correct": a_only, "b_only_correct": b_only, "mcnemar_p": p}
