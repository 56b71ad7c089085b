"""Smoke test of the MRPC benchmark (`distillery bench --benchmark mrpc`): its whole code path on a
tiny slice of GLUE MRPC (sentence pairs, read as GLUE ships them), with a random-init tiny BERT as
teacher. It asserts that every row carries the positive-class F1, that the MRPC targets are
evaluated and that the outputs are written; the figures themselves mean nothing here."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import make_tiny_teacher

pytestmark = [pytest.mark.slow, pytest.mark.mrpc]


def test_mrpc_bench_quick_produces_f1_rows_targets_and_outputs(mrpc_dir, prefect_harness, tmp_path):
    from bench.run import run_benchmark
    from distillery.data import read_table

    frame = read_table(mrpc_dir / "train.tsv", "#1 String", "Quality", "#2 String")
    dev = read_table(mrpc_dir / "dev.tsv", "#1 String", "Quality", "#2 String")
    teacher = make_tiny_teacher(tmp_path / "teacher", [*frame.text, *frame.text_pair, *dev.text, *dev.text_pair])
    results = run_benchmark(
        mrpc_dir, quick=True, benchmark="mrpc", work_dir=tmp_path / "work", out_dir=tmp_path / "results",
        command="pytest", overrides=[f"teacher.model={teacher}", "student.layers=[0, 2]", "student.hidden_size=16",
                                     "student.intermediate_size=32", "teacher.learning_rate=1e-3",
                                     "distill.learning_rate=1e-3", "bench.train_rows=120", "bench.eval_rows=60",
                                     "data.max_length=96"])
    assert results["benchmark"] == "mrpc" and results["data"]["eval_rows"] == 60
    for key in ("A", "B", "D", "E-quantize"):
        row = results["models"][key]
        assert 0.0 <= row["f1_positive"] <= 1.0 and math.isfinite(row["latency_p50_ms"]), key
    rows = results["models"]  # a transformer student: pruning removes heads and neurons
    assert rows["D"]["params"] == rows["E-distill"]["params"] > rows["E-prune"]["params"]
    targets = {t["name"]: t for t in results["targets"]}
    assert set(targets) == {"f1_retention_vs_A", "size_x_smaller_vs_A", "size_x_smaller_vs_B", "p50_x_lower_vs_B",
                            "f1_pts_vs_D"}
    assert all(t["met"] in (True, False) for t in targets.values() if t["value"] is not None)
    meta = json.loads((tmp_path / "work/models/quantized/distillery.json").read_text())
    assert meta["input_columns"] == ["text", "text_pair"]
    md = open(results["files"]["markdown"]).read()
    assert "MRPC benchmark" in md and "F1 (positive)" in md and "Quick mode" in md
