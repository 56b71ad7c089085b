"""Paired statistics for comparing two classifiers on the same eval rows.

Pure functions of per-row predictions (class indices) and gold labels, no I/O, so the
gate, the evaluate stage, the benchmark and a serving process can all import them.

- The difference in a metric (accuracy or macro-F1), candidate - baseline, with a paired
  bootstrap interval: rows are resampled with replacement *jointly* for both models, so
  the interval reflects only the rows on which they differ (Efron & Tibshirani 1993;
  Koehn 2004 for its use on paired system outputs). `scipy.stats.bootstrap`, percentile
  method, seeded: the same inputs always give the same interval. Percentile, not BCa,
  because BCa is undefined when every resample gives the same value (identical predictions).
- McNemar's exact test on the discordant pairs: under H0 (equal accuracy) the rows one
  model gets right and the other wrong split as Binomial(b + c, 1/2) (McNemar 1947;
  `statsmodels.stats.contingency_tables.mcnemar(exact=True)`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METRICS = ("accuracy", "macro_f1")


def metric_value(pred: np.ndarray, gold: np.ndarray, metric: str, n_classes: int) -> float:
    """`metric` of predicted class indices against gold (a prediction outside 0..n-1 is wrong).

    macro-F1 as `distillery.measure.classification_metrics` defines it: the mean F1 over the
    classes present in gold.
    """
    pred, gold = np.asarray(pred), np.asarray(gold)
    if len(gold) == 0:
        return 0.0
    if metric == "accuracy":
        return float((pred == gold).mean())
    if metric != "macro_f1":
        raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
    return float(_macro_f1_rows(pred[None, :], gold[None, :], n_classes)[0])


def _macro_f1_rows(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (resamples, n) predictions against gold of the same shape."""
    out = np.empty(len(pred))
    for i, (p, g) in enumerate(zip(pred, gold)):
        f1s = []
        for k in range(n_classes):
            in_gold = g == k
            if not in_gold.any():
                continue
            tp = float(np.sum((p == k) & in_gold))
            denom = float(np.sum(p == k) + in_gold.sum())  # 2TP + FP + FN
            f1s.append(2 * tp / denom if denom else 0.0)
        out[i] = np.mean(f1s) if f1s else 0.0
    return out


@dataclass(frozen=True)
class McNemar:
    """2x2 agreement of two models on the same rows and McNemar's exact p-value."""

    both_right: int
    only_candidate: int  # rows the candidate gets right and the baseline wrong
    only_baseline: int   # rows the baseline gets right and the candidate wrong
    both_wrong: int
    p_value: float


def mcnemar_exact(both_right: int, only_candidate: int, only_baseline: int, both_wrong: int) -> McNemar:
    """McNemar's exact (binomial) test on the discordant pairs; p = 1 when there are none."""
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[both_right, only_candidate], [only_baseline, both_wrong]]
    p = 1.0 if only_candidate + only_baseline == 0 else float(mcnemar(table, exact=True).pvalue)
    return McNemar(int(both_right), int(only_candidate), int(only_baseline), int(both_wrong), min(p, 1.0))


@dataclass(frozen=True)
class PairedComparison:
    """candidate - baseline in `metric` on the same `n` rows, its interval and McNemar's test."""

    metric: str
    n: int
    candidate: float
    baseline: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    seed: int
    mcnemar: McNemar

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PairedComparison":
        return cls(**{**d, "mcnemar": McNemar(**d["mcnemar"])})

    def describe(self) -> str:
        pct = round(self.confidence * 100, 2)
        return (f"{self.metric} difference {self.difference:+.4f} ({pct:g}% CI [{self.ci_low:+.4f}, "
                f"{self.ci_high:+.4f}], n={self.n}; McNemar exact p={self.mcnemar.p_value:.3g} on "
                f"{self.mcnemar.only_candidate}+{self.mcnemar.only_baseline} discordant rows)")


def paired_comparison(candidate: np.ndarray, baseline: np.ndarray, gold: np.ndarray, *, metric: str = "accuracy",
                      n_classes: int | None = None, confidence: float = 0.95, resamples: int = 1000,
                      seed: int = 0) -> PairedComparison:
    """Compare two models' predicted class indices on the same rows (same order as `gold`)."""
    from scipy.stats import bootstrap

    cand, base, gold = (np.asarray(a).astype(np.int64).ravel() for a in (candidate, baseline, gold))
    if not (len(cand) == len(base) == len(gold)):
        raise ValueError(f"paired comparison needs the same rows: {len(cand)} candidate predictions, "
                         f"{len(base)} baseline predictions, {len(gold)} gold labels")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
    k = int(n_classes if n_classes is not None else max(gold.max(initial=0), cand.max(initial=0),
                                                        base.max(initial=0)) + 1)
    right_c, right_b = cand == gold, base == gold
    test = mcnemar_exact(int(np.sum(right_c & right_b)), int(np.sum(right_c & ~right_b)),
                         int(np.sum(~right_c & right_b)), int(np.sum(~right_c & ~right_b)))
    value_c, value_b = metric_value(cand, gold, metric, k), metric_value(base, gold, metric, k)
    diff = value_c - value_b
    if len(gold) < 2 or np.array_equal(cand, base):
        low = high = diff  # no row to resample, or no row on which the models differ: no uncertainty
    else:
        if metric == "accuracy":  # the mean of a per-row difference: resample it directly, vectorised
            d = right_c.astype(float) - right_b.astype(float)
            data, stat = (d,), lambda x, axis=-1: x.mean(axis=axis)
        else:  # a non-additive metric: resample row indices and recompute it for both models
            data = (np.arange(len(gold)),)

            def stat(idx, axis=-1):
                idx = np.atleast_2d(idx)
                return (_macro_f1_rows(cand[idx], gold[idx], k) - _macro_f1_rows(base[idx], gold[idx], k))
        res = bootstrap(data, stat, n_resamples=int(resamples), confidence_level=confidence, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedComparison(metric, len(gold), value_c, value_b, diff, low, high, float(confidence),
                            int(resamples), int(seed), test)
