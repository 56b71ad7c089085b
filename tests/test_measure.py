"""Metrics on hand-counted predictions, and the timing helpers' contracts."""

import numpy as np
import pytest

from distillery.measure import classification_metrics, confusion_matrix, latency_ms, throughput_sps


def onehot(pred, n=3):
    return np.eye(n)[pred]


def test_accuracy_and_macro_f1_by_hand():
    gold = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(onehot(pred), gold, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class 0: P=1/2 R=1/2 F1=1/2; class 1: P=2/3 R=1 F1=0.8; class 2: P=1 R=1/2 F1=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class_recall"] == pytest.approx([0.5, 1.0, 0.5])


def test_class_absent_from_gold_is_left_out_of_macro_f1():
    m = classification_metrics(onehot(np.array([0, 1])), np.array([0, 1]), 3)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == pytest.approx(1.0)


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([1, 1, 0]), np.array([0, 1, 0]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


class CountingPredictor:
    def __init__(self):
        self.calls = []

    def predict_logits(self, texts, batch_size=32):
        self.calls.append((len(texts), batch_size))
        return np.zeros((len(texts), 2))


def test_latency_times_batch_one_calls_after_warmup():
    p = CountingPredictor()
    p50, p95 = latency_ms(p, [f"t{i}" for i in range(10)], samples=5, warmup=2)
    assert p.calls == [(1, 1)] * 7 and 0 <= p50 <= p95


def test_throughput_scores_every_text_in_batches():
    p = CountingPredictor()
    sps = throughput_sps(p, [f"t{i}" for i in range(40)], batch_size=8)
    assert p.calls == [(8, 8), (40, 8)] and sps > 0


def test_expected_calibration_error_by_hand():
    from distillery.measure import expected_calibration_error

    # Two rows at confidence 0.9 (bin 9), one right and one wrong: |0.5 - 0.9| = 0.4, weight 1.
    logit = np.log(np.array([0.9, 0.1]))
    logits = np.stack([logit, logit])
    assert expected_calibration_error(logits, np.array([0, 1])) == pytest.approx(0.4)
    # Perfectly confident and right: 0.
    assert expected_calibration_error(np.array([[20.0, 0.0]]), np.array([0])) == pytest.approx(0.0, abs=1e-6)
