"""Stage evaluate: every stage's figures side by side, and the gate on the final model.

A failed gate is a normal outcome (the decision is written, the stage succeeds).
These are the threshold checks; the register step adds the comparison with the
champion (which needs the registry) and writes the full decision to
reports/promotion.json, leaving this stage's gate.json as DVC recorded it.
"""

from __future__ import annotations

from distillery.config import Params
from distillery.gate import evaluate_gate
from distillery.measure import FIGURES
from tasks.common import StageContext, StageIO, read_json, report_path, report_rel, write_json_atomic, write_report

MODEL_STAGES = ("teacher", "distill", "prune", "quantize")
FINAL_STAGE = "quantize"


def io(p: Params) -> StageIO:
    return StageIO(deps=[report_rel(p, s) for s in MODEL_STAGES],
                   metrics=[report_rel(p, "evaluate"), report_rel(p, "gate")], params=["gate"])


def stage_table(reports: dict[str, dict]) -> list[dict]:
    return [{"stage": s, **{k: reports[s][k] for k in FIGURES}} for s in MODEL_STAGES if s in reports]


def run(ctx: StageContext) -> dict:
    reports = {s: read_json(report_path(ctx.root, ctx.params, s)) for s in MODEL_STAGES}
    decision = evaluate_gate(reports[FINAL_STAGE], reports["teacher"], ctx.params.gate)
    gate = {**decision.to_dict(), "model_stage": FINAL_STAGE, "metric": ctx.params.gate.metric,
            "metric_value": reports[FINAL_STAGE][ctx.params.gate.metric]}
    write_json_atomic(ctx.report_path("gate"), gate)
    teacher = reports["teacher"]
    final = reports[FINAL_STAGE]
    summary = {
        "table": stage_table(reports),
        "final": {k: final[k] for k in FIGURES},
        "retention": final["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else 0.0,
        "size_ratio": teacher["size_mb"] / final["size_mb"] if final["size_mb"] else 0.0,
        "latency_ratio": teacher["latency_p50_ms"] / final["latency_p50_ms"] if final["latency_p50_ms"] else 0.0,
        "gate_passed": decision.passed,
    }
    write_report(ctx, "evaluate", summary)
    print("evaluate: gate " + ("PASSED" if decision.passed else "FAILED"))
    for reason in decision.reasons:
        print(f"  - {reason}")
    return summary
