"""The figures every stage reports, measured the same way for PyTorch and ONNX models.

A predictor is anything with `predict_logits(texts, batch_size) -> ndarray`; timing
covers tokenization plus inference (what a caller of the served model waits for),
on real eval texts at their real lengths.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np

from distillery.config import MeasureConfig

# The metric names are the same in every stage and every run, so MLflow can compare them.
FIGURES = ("accuracy", "macro_f1", "size_mb", "params", "latency_p50_ms", "latency_p95_ms", "throughput_sps")


class Predictor(Protocol):
    def predict_logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray: ...


def confusion_matrix(pred: np.ndarray, gold: np.ndarray, n_classes: int) -> np.ndarray:
    """cm[i, j] = number of rows with gold class i predicted as j."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (gold, pred), 1)
    return cm


def expected_calibration_error(logits: np.ndarray, gold: np.ndarray, n_bins: int = 10) -> float:
    """ECE (Guo et al. 2017): sum over confidence bins of |accuracy - mean confidence|, weighted by
    the bin's share of rows. 0 = confidences match observed accuracy."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    conf, pred = p.max(axis=-1), p.argmax(axis=-1)
    correct = (pred == np.asarray(gold)).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_metrics(logits: np.ndarray, gold: np.ndarray, n_classes: int) -> dict:
    """Accuracy and macro-F1 (unweighted mean of per-class F1; a class never predicted
    and never present counts as F1 = 0 only if present in gold)."""
    pred = np.asarray(logits).argmax(axis=-1)
    gold = np.asarray(gold)
    cm = confusion_matrix(pred, gold, n_classes)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(axis=0), out=np.zeros_like(tp), where=cm.sum(axis=0) > 0)
    recall = np.divide(tp, cm.sum(axis=1), out=np.zeros_like(tp), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    present = cm.sum(axis=1) > 0
    return {
        "accuracy": float((pred == gold).mean()) if len(gold) else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": recall.tolist(),
        "ece": expected_calibration_error(logits, gold) if len(gold) else 0.0,
        "confusion_matrix": cm.tolist(),
        # Per eval row, in eval order: what paired comparisons, fidelity and slices are computed from.
        "predictions": pred.tolist(),
    }


def latency_ms(predictor: Predictor, texts: list[str], samples: int, warmup: int) -> tuple[float, float]:
    """Batch-1 latency p50 and p95 in ms over the first `samples` texts."""
    chosen = texts[: max(1, samples)]
    for t in chosen[:warmup]:
        predictor.predict_logits([t], batch_size=1)
    times = []
    for t in chosen:
        start = time.perf_counter()
        predictor.predict_logits([t], batch_size=1)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def throughput_sps(predictor: Predictor, texts: list[str], batch_size: int) -> float:
    """Samples per second scoring all `texts` in batches of `batch_size` (after one warm batch)."""
    predictor.predict_logits(texts[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    predictor.predict_logits(texts, batch_size=batch_size)
    return len(texts) / max(time.perf_counter() - start, 1e-9)


def weights_size_mb(model_dir: str | Path) -> float:
    """Size of the weight files (safetensors / ONNX) in MB (10^6 bytes)."""
    d = Path(model_dir)
    files = list(d.glob("*.safetensors")) + list(d.glob("*.onnx"))
    return sum(f.stat().st_size for f in files) / 1e6


def measure_predictor(predictor: Predictor, texts: list[str], gold: np.ndarray, n_classes: int,
                      cfg: MeasureConfig, *, model_dir: str | Path, n_params: int,
                      logits: np.ndarray | None = None) -> dict:
    """All figures for one model on the eval split, timed as `cfg` (params.yaml `measure:`) says.
    Pass `logits` if already computed."""
    batch_size = cfg.throughput_batch_size
    if logits is None:
        logits = predictor.predict_logits(texts, batch_size=batch_size)
    figures = classification_metrics(logits, gold, n_classes)
    p50, p95 = latency_ms(predictor, texts, cfg.latency_samples, cfg.warmup)
    figures.update(
        size_mb=round(weights_size_mb(model_dir), 4),
        params=int(n_params),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        throughput_sps=throughput_sps(predictor, texts, batch_size),
    )
    return figures
