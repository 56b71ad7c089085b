"""The gate's decisions and the promotion rule, as pure functions."""

from distillery.config import GateConfig
import pytest

from distillery.gate import CHAMPION_CHECK, GateDecision, champion_check, decide_promotion, evaluate_gate

TEACHER = {"accuracy": 0.90, "size_mb": 90.0, "latency_p50_ms": 20.0}
GOOD = {"accuracy": 0.88, "size_mb": 5.0, "latency_p50_ms": 2.0}
# GateConfig's defaults are params.yaml's thresholds; OFF switches those off for tests of single checks.
OFF = dict(min_accuracy=None, min_retention=None, max_size_mb=None, max_latency_p50_ms=None)
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
                      GateConfig(**{**OFF, "min_accuracy": 0.05}))
    assert d.passed and [c.name for c in d.checks] == ["accuracy"]


def test_decision_round_trips_through_json_dict():
    d = evaluate_gate(GOOD, TEACHER, CFG)
    assert GateDecision.from_dict(d.to_dict()) == d


def test_champion_check_is_skipped_with_its_reason_when_there_is_no_champion_or_no_tolerance():
    none_yet = champion_check("accuracy", 0.80, None, 0.0, None, "no champion yet")
    assert none_yet.skipped and none_yet.passed and none_yet.status == "skipped"
    assert none_yet.observed is None and none_yet.threshold == 0.0
    assert none_yet.reason == f"{CHAMPION_CHECK}: skipped: no champion yet"
    off = champion_check("accuracy", 0.10, 0.90, None, "3")
    assert off.skipped and off.passed and "gate.max_regression is null" in off.reason


def test_champion_check_observes_the_regression_against_the_tolerance():
    equal = champion_check("accuracy", 0.85, 0.85, 0.0, "3", "re-scored on the current eval data")
    assert equal.passed and equal.status == "pass" and equal.observed == 0.0  # not worse is enough
    better = champion_check("accuracy", 0.90, 0.85, 0.0, "3")
    assert better.passed and better.observed == pytest.approx(-0.05)
    within = champion_check("accuracy", 0.84, 0.85, 0.01, "3")  # 0.85 - 0.84 is 0.0100000000000000089
    assert within.passed
    worse = champion_check("accuracy", 0.80, 0.85, 0.01, "3", "re-scored on the current eval data")
    assert not worse.passed and worse.status == "fail"
    assert worse.observed == pytest.approx(0.05) and worse.threshold == 0.01
    assert worse.reason == (f"{CHAMPION_CHECK}: accuracy 0.8000 vs champion v3 0.8500, re-scored on the "
                            "current eval data: regression 0.0500 <= 0.0100 required: FAILED")


def test_a_champion_that_cannot_be_scored_fails_the_check():
    c = champion_check("accuracy", 0.99, None, 0.0, "4", "champion could not be scored")
    assert not c.passed and not c.skipped and "v4 could not be scored" in c.reason


def test_champion_moves_only_when_every_check_passes():
    thresholds = evaluate_gate(GOOD, TEACHER, CFG)
    first = thresholds.with_check(champion_check("accuracy", 0.88, None, 0.0))
    promotion = decide_promotion(first)
    assert first.passed and promotion.promote and "no champion yet" in promotion.reason

    better = thresholds.with_check(champion_check("accuracy", 0.88, 0.86, 0.0, "1"))
    assert decide_promotion(better).promote

    worse = thresholds.with_check(champion_check("accuracy", 0.88, 0.90, 0.0, "1"))
    kept = decide_promotion(worse)
    assert not worse.passed and [c.name for c in worse.failed] == [CHAMPION_CHECK]
    assert not kept.promote and kept.reason.startswith("kept as challenger, failed: regression_vs_champion")
    assert "0.8800 vs champion v1 0.9000" in kept.reason

    failed_size = evaluate_gate({**GOOD, "size_mb": 12.0}, TEACHER, CFG)
    kept = decide_promotion(failed_size.with_check(champion_check("accuracy", 0.88, 0.80, 0.0, "1")))
    assert not kept.promote and "size_mb: 12.00 <= 10.00 required: FAILED" in kept.reason
    assert CHAMPION_CHECK not in kept.reason  # only the failed checks are named


def test_decision_with_skipped_champion_check_round_trips_and_reports_status():
    d = evaluate_gate(GOOD, TEACHER, CFG).with_check(champion_check("accuracy", 0.88, None, 0.0))
    as_dict = d.to_dict()
    assert [c["status"] for c in as_dict["checks"]] == ["pass"] * 4 + ["skipped"]
    assert as_dict["reasons"][-1] == f"{CHAMPION_CHECK}: skipped: no champion yet"
    assert GateDecision.from_dict(as_dict) == d


def test_optional_checks_macro_f1_weakest_class_p95_and_calibration():
    cand = {**GOOD, "macro_f1": 0.86, "per_class_recall": [0.95, 0.40, 0.90], "latency_p95_ms": 9.0, "ece": 0.08}
    cfg = GateConfig(**OFF, min_macro_f1=0.85, min_class_recall=0.5, max_latency_p95_ms=10.0, max_ece=0.05)
    d = evaluate_gate(cand, TEACHER, cfg)
    by_name = {c.name: c for c in d.checks}
    assert set(by_name) == {"macro_f1", "min_class_recall", "latency_p95_ms", "ece"}
    assert by_name["macro_f1"].passed and by_name["latency_p95_ms"].passed
    assert not by_name["min_class_recall"].passed and by_name["min_class_recall"].observed == 0.40
    assert not by_name["ece"].passed and not d.passed
