"""Console output: the gate table printed by `distillery run` and `distillery status`."""

from rich.console import Console

from distillery.config import GateConfig
from distillery.gate import champion_check, evaluate_gate
from distillery.report import gate_rows, print_run_summary, print_status

FIGURES = {"accuracy": 0.80, "macro_f1": 0.79, "size_mb": 5.0, "params": 1000, "latency_p50_ms": 2.0,
           "latency_p95_ms": 3.0, "throughput_sps": 100.0}
DECISION = evaluate_gate(FIGURES, {"accuracy": 0.85}, GateConfig(min_accuracy=0.6, max_size_mb=10.0, min_retention=None,
                                                                     max_latency_p50_ms=None)).with_check(
    champion_check("accuracy", 0.80, 0.85, 0.01, "3", "re-scored on the current eval data")).to_dict()


def render(fn, arg) -> str:
    console = Console(record=True, width=220)
    fn(arg, console=console)
    return console.export_text()


def test_gate_rows_carry_every_check_with_threshold_observed_and_result():
    rows = {r["name"]: r for r in gate_rows(DECISION)}
    assert list(rows) == ["accuracy", "size_mb", "regression_vs_champion"]
    assert (rows["accuracy"]["observed"], rows["accuracy"]["threshold"], rows["accuracy"]["status"]) == ("0.8", "0.6", "pass")
    assert (rows["regression_vs_champion"]["observed"], rows["regression_vs_champion"]["threshold"],
            rows["regression_vs_champion"]["status"]) == ("0.05", "0.01", "fail")
    assert rows["accuracy"]["detail"] == "0.8000 >= 0.6000 required: ok"
    skipped = gate_rows({"checks": [champion_check("accuracy", 0.8, None, 0.0).__dict__ | {"status": "skipped"}]})
    assert skipped[0]["detail"] == "no champion yet"


def test_run_summary_prints_the_champion_comparison_in_the_gate_table():
    result = {"table": [{"stage": "quantize", **FIGURES}], "gate": DECISION, "ran": {"quantize": True},
              "registration": {"version": "4", "aliases": ["challenger"], "reason": "kept as challenger, failed: ..."}}
    text = render(print_run_summary, result)
    assert "Gate: FAILED" in text
    line = next(l for l in text.splitlines() if "regression_vs_champion │" in l)
    assert "0.05" in line and "0.01" in line and "fail" in line and "vs champion v3 0.8500" in line
    assert "version 4 with alias(es) challenger" in text


def test_status_shows_the_last_decision_or_the_thresholds_before_any_registration():
    status = {"model_name": "m", "champion": None, "challenger": None, "versions": [], "history": []}
    before = render(print_status, {**status, "last_decision": {"decision": DECISION}})
    assert "Last gate decision: FAILED (thresholds only: not registered yet)" in before
    after = render(print_status, {**status, "last_decision": {"decision": DECISION, "version": "4",
                                                               "decided_at": "2026-11-28T00:00:00+00:00",
                                                               "reason": "kept as challenger"}})
    assert "Last gate decision: FAILED (version 4, 2026-11-28T00:00:00+00:00)" in after
    assert "regression_vs_champion" in after and "kept as challenger" in after
