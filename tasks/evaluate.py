"""Stage evaluate: every stage's figures side by side, and the gate on the final model.

A failed gate is a normal outcome (the decision is written, the stage succeeds).
These are the threshold checks; the register step adds the comparison with the
champion (which needs the registry) and writes the full decision to
reports/promotion.json, leaving this stage's gate.json as DVC recorded it.

From the per-row predictions each model stage records, every stage also gets, on the
same eval rows: its paired comparison with the teacher (difference in the gate metric,
bootstrap interval, McNemar), its fidelity (share of rows on the teacher's label) and
its figures on each slice of `gate.slices`. Slices live here, not in the training
stages, so that changing a slice re-runs this stage only, never training.
"""

from __future__ import annotations

import json

import numpy as np

from distillery.config import Params
from distillery.gate import (Check, champion_check, evaluate_gate, fidelity_check, slice_accuracy_checks,
                            slice_champion_checks, suite_champion_check, suite_check)
from distillery.measure import FIGURES
from distillery.stats import paired_comparison
from distillery.suite import load_suite, regressions, score_suite
from tasks.common import StageContext, read_json, report_path, write_json_atomic, write_report
from tasks.graph import Stage, reads_reports_of, stage_graph

FINAL_STAGE = "quantize"  # the stage whose model is gated and registered (paths.quantized_dir)


def model_stages(graph: dict[str, Stage]) -> list[str]:
    """The stages compared here: those whose reports this stage reads (dvc.yaml's deps), in graph order."""
    return reads_reports_of(graph, "evaluate")


def stage_table(reports: dict[str, dict]) -> list[dict]:
    """One row per model stage, in the order of `reports` (graph order)."""
    return [{"stage": s, **{k: r[k] for k in FIGURES}} for s, r in reports.items()]


def eval_data(root, params: Params):
    """(eval split, label names) as validated."""
    from distillery.data import load_split

    vdir = root / params.paths.validated_dir
    return load_split(vdir / "eval.parquet"), json.loads((vdir / "labels.json").read_text())["labels"]


def slice_rows(root, params: Params, eval_set, labels: list[str], tokenizer_source: str) -> dict[str, list[int]]:
    from distillery.slices import all_slice_rows

    return all_slice_rows(list(params.gate.slices), labels, eval_set.labels, list(eval_set.texts),
                          tokenizer_source=tokenizer_source, eval_path=root / params.data.eval_path)


def predictions(report: dict, stage: str, n_rows: int) -> np.ndarray:
    pred = report.get("predictions")
    if pred is None or len(pred) != n_rows:
        raise ValueError(f"reports/{stage}.json: no per-row predictions for the {n_rows} eval rows "
                         f"(written by an older version?): run `dvc repro -f {stage}`")
    return np.asarray(pred)


def compare_stages(reports: dict[str, dict], gold: np.ndarray, n_classes: int, rows: dict[str, list[int]],
                   params: Params) -> dict[str, dict]:
    """{stage: {vs_teacher, fidelity, slices}}: each stage against the teacher on the same rows."""
    from distillery.slices import slice_figures

    g = params.gate
    teacher = predictions(reports["teacher"], "teacher", len(gold))
    out = {}
    for s in reports:
        pred = predictions(reports[s], s, len(gold))
        out[s] = {"fidelity": float((pred == teacher).mean()) if len(gold) else 0.0,
                  "slices": slice_figures(rows, pred, gold, n_classes)}
        if s != "teacher":
            out[s]["vs_teacher"] = paired_comparison(
                pred, teacher, gold, metric=g.metric, n_classes=n_classes, confidence=g.confidence,
                resamples=g.bootstrap_resamples, seed=params.base.seed).to_dict()
    return out


def predict_labels(model_dir, texts: list[str], threads: int) -> list[str]:
    """The final (ONNX) model's labels for `texts` (none: nothing loaded)."""
    if not texts:
        return []
    from distillery.onnx_model import OnnxClassifier

    return [r["label"] for r in OnnxClassifier.from_dir(model_dir, threads=threads).predict(list(texts))]


def champion_suite_regressions(root, params: Params, gate: dict, champion_uri: str | None) -> list[str] | None:
    """Must-pass ids the champion (its registered pyfunc) passes and the final model fails; None when the
    suite is empty, [] when there is no champion to compare with."""
    result = gate.get("suite")
    if not result or not result["total"]:
        return None
    if champion_uri is None:
        return []
    import mlflow

    _, labels = eval_data(root, params)
    suite = load_suite(root / params.gate.suite, labels)
    predicted = mlflow.pyfunc.load_model(champion_uri).predict(suite.texts)["label"].astype(str).tolist()
    return regressions(result, score_suite(suite, predicted))


def champion_checks(root, params: Params, figures: dict, gate: dict, champion_value: float | None, source: str,
                    champion_pred: list | None, champion_version: str | None,
                    champion_uri: str | None = None) -> list[Check]:
    """The comparison with the champion (known only at registration): overall, under
    `gate.champion_rule`, on the same eval rows, and on each slice (`gate.max_slice_regression`).

    figures: the final stage's report (with its per-row predictions); gate: this stage's gate.json.
    """
    from distillery.stats import paired_comparison

    g, metric = params.gate, params.gate.metric
    comparison = slices = None
    if champion_pred is not None and champion_version is not None:
        eval_set, labels = eval_data(root, params)
        cand, champ = predictions(figures, FINAL_STAGE, len(eval_set)), np.asarray(champion_pred)

        def compare(rows=None, m=metric):
            idx = np.arange(len(eval_set)) if rows is None else np.asarray(rows)
            return paired_comparison(cand[idx], champ[idx], eval_set.labels[idx], metric=m, n_classes=len(labels),
                                     confidence=g.confidence, resamples=g.bootstrap_resamples,
                                     seed=params.base.seed)

        comparison = compare()
        if g.max_slice_regression is not None:  # slices are small: accuracy, the figure a slice can carry
            slices = {name: compare(rows, "accuracy") for name, rows in gate.get("slice_rows", {}).items()}
    checks = [champion_check(metric, float(figures[metric]), champion_value, g.max_regression,
                             champion_version, source, comparison, g.champion_rule)]
    if slices:
        checks += slice_champion_checks(slices, g.max_slice_regression, champion_version)
    regressed = champion_suite_regressions(root, params, gate, champion_uri if champion_version else None)
    return checks + suite_champion_check(regressed, champion_version)


def run(ctx: StageContext) -> dict:
    p = ctx.params
    reports = {s: read_json(report_path(ctx.root, p, s)) for s in model_stages(stage_graph(ctx.root))}
    eval_set, labels = eval_data(ctx.root, p)
    rows = slice_rows(ctx.root, p, eval_set, labels, str(ctx.path(p.paths.teacher_dir)))
    compared = compare_stages(reports, eval_set.labels, len(labels), rows, p)
    final = compared[FINAL_STAGE]
    decision = evaluate_gate(reports[FINAL_STAGE], reports["teacher"], p.gate)
    suite = load_suite(ctx.path(p.gate.suite), labels)
    suite_result = score_suite(suite, predict_labels(ctx.path(p.paths.quantized_dir), suite.texts, p.base.threads))
    for check in [*fidelity_check(final["fidelity"], p.gate.min_fidelity),
                  *slice_accuracy_checks(final["slices"], p.gate.min_slice_accuracy), *suite_check(suite_result)]:
        decision = decision.with_check(check)
    gate = {**decision.to_dict(), "model_stage": FINAL_STAGE, "metric": p.gate.metric,
            "metric_value": reports[FINAL_STAGE][p.gate.metric], "fidelity": final["fidelity"],
            "vs_teacher": final["vs_teacher"], "slices": final["slices"],
            "slice_rows": rows,  # the register step compares the champion on the same slices
            "suite": suite_result}
    write_json_atomic(ctx.report_path("gate"), gate)
    teacher = reports["teacher"]
    figures = reports[FINAL_STAGE]
    summary = {
        "table": [{**row, "fidelity": compared[row["stage"]]["fidelity"],
                   **({"vs_teacher": compared[row["stage"]]["vs_teacher"]} if "vs_teacher" in compared[row["stage"]]
                      else {}),
                   "slices": compared[row["stage"]]["slices"]} for row in stage_table(reports)],
        "final": {k: figures[k] for k in FIGURES},
        "fidelity": final["fidelity"],
        "vs_teacher": final["vs_teacher"],  # the final model - the teacher, paired (numbers: logged to MLflow)
        "retention": figures["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else 0.0,
        "size_ratio": teacher["size_mb"] / figures["size_mb"] if figures["size_mb"] else 0.0,
        "latency_ratio": teacher["latency_p50_ms"] / figures["latency_p50_ms"] if figures["latency_p50_ms"] else 0.0,
        "gate_passed": decision.passed,
    }
    write_report(ctx, "evaluate", summary)
    print("evaluate: gate " + ("PASSED" if decision.passed else "FAILED"))
    for reason in decision.reasons:
        print(f"  - {reason}")
    return summary
