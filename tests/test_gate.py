"""The gate's decisions and the promotion rule, as pure functions."""

from distillery.config import GateConfig
from distillery.gate import GateDecision, decide_promotion, evaluate_gate

TEACHER = {"accuracy": 0.90, "size_mb": 90.0, "latency_p50_ms": 20.0}
GOOD = {"accuracy": 0.88, "size_mb": 5.0, "latency_p50_ms": 2.0}
CFG = GateConfig(min_accuracy=0.8, min_retention=0.95, max_size_mb=10.0, max_latency_p50_ms=5.0)


def test_gate_passes_when_every_threshold_is_met():
    d = evaluate_gate(GOOD, TEACHER, CFG)
    assert d.passed
    assert [c.name for c in d.checks] == ["accuracy", "retention_of_teacher_accuracy", "size_mb", "latency_p50_ms"]
    assert all(c.passed for c in d.checks)


def test_gate_fails_with_the_reason_of_each_failed_check():
    bad = {"accuracy": 0.80, "size_mb": 12.0, "latency_p50_ms": 2.0}
    d = evaluate_gate(bad, TEACHER, CFG)
    assert not d.passed
    failed = {c.name: c for c in d.failed}
    assert set(failed) == {"retention_of_teacher_accuracy", "size_mb"}
    assert failed["retention_of_teacher_accuracy"].observed == 0.80 / 0.90
    assert "12.00 <= 10.00 required: FAILED" in failed["size_mb"].reason


def test_boundary_values_pass():
    edge = {"accuracy": 0.8, "size_mb": 10.0, "latency_p50_ms": 5.0}
    d = evaluate_gate(edge, {"accuracy": 0.8}, CFG)
    assert d.passed


def test_null_thresholds_are_not_checked():
    d = evaluate_gate({"accuracy": 0.1, "size_mb": 1e9, "latency_p50_ms": 1e9}, TEACHER,
                      GateConfig(min_accuracy=0.05))
    assert d.passed and [c.name for c in d.checks] == ["accuracy"]


def test_decision_round_trips_through_json_dict():
    d = evaluate_gate(GOOD, TEACHER, CFG)
    assert GateDecision.from_dict(d.to_dict()) == d


def test_promotion_rules():
    assert not decide_promotion(False, "accuracy", 0.99, None).promote
    assert decide_promotion(True, "accuracy", 0.80, None).promote
    assert decide_promotion(True, "accuracy", 0.85, 0.85, "3").promote  # not worse is enough
    kept = decide_promotion(True, "accuracy", 0.84, 0.85, "3")
    assert not kept.promote and "champion kept" in kept.reason and "v3" in kept.reason


def test_optional_checks_macro_f1_weakest_class_p95_and_calibration():
    cand = {**GOOD, "macro_f1": 0.86, "per_class_recall": [0.95, 0.40, 0.90], "latency_p95_ms": 9.0, "ece": 0.08}
    cfg = GateConfig(min_macro_f1=0.85, min_class_recall=0.5, max_latency_p95_ms=10.0, max_ece=0.05)
    d = evaluate_gate(cand, TEACHER, cfg)
    by_name = {c.name: c for c in d.checks}
    assert set(by_name) == {"macro_f1", "min_class_recall", "latency_p95_ms", "ece"}
    assert by_name["macro_f1"].passed and by_name["latency_p95_ms"].passed
    assert not by_name["min_class_recall"].passed and by_name["min_class_recall"].observed == 0.40
    assert not by_name["ece"].passed and not d.passed
