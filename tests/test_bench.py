"""Smoke test of the SST-2 benchmark (bench/): its whole code path on a tiny slice of SST-2.

The real pipeline (Prefect flow over the DVC stages) runs in a bench project under tmp_path
with the quick profile and a random-init tiny BERT as teacher, so it takes minutes, not the
full benchmark's half hour; the test asserts that every model row, figure, ratio, pipeline
figure, target and output file is produced, the tiny profile's row (E-tiny: a second project on the
first one's teacher) included, and that the README's plain-onnxruntime scoring lines give the
pipeline's own logits. The figures themselves mean nothing here.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import onnx
import pytest

from tests.helpers import make_tiny_teacher

pytestmark = [pytest.mark.slow, pytest.mark.sst2]

ROWS = ("A", "B", "C", "D", "E-distill", "E-prune", "E-quantize", "E-tiny")
FIGURES = ("accuracy", "macro_f1", "size_mb", "params", "latency_p50_ms", "latency_p95_ms", "throughput_sps",
           "peak_rss_mb")


def test_bench_quick_produces_every_row_figure_and_output(sst2_dir, prefect_harness, tmp_path):
    from bench.report import REQUIRED_ROWS
    from bench.run import run_benchmark
    from distillery.data import read_table

    vocab_texts = list(read_table(sst2_dir / "dev.tsv", "sentence", "label")["text"])
    vocab_texts += list(read_table(sst2_dir / "train.tsv", "sentence", "label")["text"][:3000])
    teacher = make_tiny_teacher(tmp_path / "teacher", vocab_texts)
    results = run_benchmark(
        sst2_dir, quick=True, work_dir=tmp_path / "work", out_dir=tmp_path / "results", command="pytest",
        overrides=[f"teacher.model={teacher}", "student.bilstm.embedding_dim=24", "student.bilstm.hidden_size=16",
                   "student.bilstm.classifier_hidden=16", "teacher.learning_rate=1e-3",
                   "bench.train_rows=200", "bench.eval_rows=40"],
        tiny_overrides=["student.bilstm.embedding_dim=16", "student.bilstm.hidden_size=8",
                        "student.bilstm.classifier_hidden=8"])  # the tiny teacher is 32 wide

    assert set(REQUIRED_ROWS) <= set(ROWS) <= set(results["models"])
    assert results["data"]["train_rows"] == 200 and results["data"]["eval_rows"] == 40
    for key in ROWS:
        row = results["models"][key]
        for fig in FIGURES:
            assert isinstance(row[fig], (int, float)) and math.isfinite(row[fig]), (key, fig)
        # 40 eval sentences: accuracy is a whole number of them, and each row carries its 40 predictions
        assert row["accuracy"] * 40 == pytest.approx(round(row["accuracy"] * 40)) and len(row["predictions"]) == 40, key
        assert 0.0 <= row["accuracy"] <= 1.0 and row["size_mb"] > 0 and row["latency_p50_ms"] > 0, key
        assert row["latency_p95_ms"] >= row["latency_p50_ms"] and row["peak_rss_mb"] > 0, key
        assert row["label"].startswith(key) and row["other_cpu_share"] is not None, key
        for ref in ("vs_A", "vs_B"):
            ratios = results["ratios"][key][ref]
            assert all(v is not None and math.isfinite(v) for v in ratios.values()), (key, ref, ratios)
    assert results["ratios"]["A"]["vs_A"]["size_x_smaller"] == pytest.approx(1.0)
    # Each model's accuracy difference to A and to B on the same dev rows, with its paired interval.
    for key in ROWS:
        for ref in ("A", "B"):
            paired = results["paired"][key][f"vs_{ref}"]
            assert paired["difference"] == pytest.approx(results["models"][key]["accuracy"]
                                                         - results["models"][ref]["accuracy"])
            assert paired["ci_low"] <= paired["difference"] <= paired["ci_high"] and paired["n"] == 40
    assert results["paired"]["A"]["vs_A"]["ci_low"] == results["paired"]["A"]["vs_A"]["ci_high"] == 0.0
    rows = results["models"]
    assert rows["B"]["size_mb"] < rows["A"]["size_mb"] and rows["C"]["size_mb"] < rows["A"]["size_mb"]
    assert rows["B"]["params"] == rows["A"]["params"] == rows["C"]["params"]
    # The profile's student is a BiLSTM (bench/sst2.params.yaml): pruning passes it through unchanged,
    # and its final model has int8 LSTM weights over a 4-bit embedding table (the MRPC smoke test
    # covers a pruned transformer student).
    assert rows["D"]["params"] == rows["E-distill"]["params"] == rows["E-prune"]["params"]
    graph = onnx.load(str(Path(rows["E-quantize"]["model_dir"]) / "model.onnx")).graph
    assert {"GatherBlockQuantized", "DynamicQuantizeLSTM"} <= {n.op_type for n in graph.node}
    assert rows["E-quantize"]["size_mb"] < rows["E-prune"]["size_mb"]
    assert rows["B"]["memory"]["imports_rss_mb"] < rows["A"]["memory"]["imports_rss_mb"]  # no torch for ONNX
    # The tiny profile: its own project, on A (not trained again), a BiLSTM with 4-bit embeddings.
    tiny = results["tiny"]
    assert rows["E-tiny"]["size_mb"] < rows["E-quantize"]["size_mb"]
    assert rows["E-tiny"]["params"] < rows["E-quantize"]["params"]
    assert tiny["fresh_project"] and all(tiny["ran"].values()) and tiny["teacher_trained"] is False
    assert tiny["teacher_dir"] == str(Path(results["work_dir"]) / "models" / "teacher")
    soft = tiny["soft_targets"]
    assert soft["same_teacher_as_main"] and soft["chunks_seeded_from_main"] >= 1  # so its chunks can be reused
    assert 0 < soft["augmented_rows"] <= 200 and soft["rows"] == 200 + soft["augmented_rows"]  # augment.copies: 1
    assert tiny["student"]["architecture"] == "bilstm"
    assert tiny["quantize"]["variant"] == "int4_embeddings"
    graph = onnx.load(str(Path(rows["E-tiny"]["model_dir"]) / "model.onnx")).graph
    assert {"GatherBlockQuantized", "DynamicQuantizeLSTM"} <= {n.op_type for n in graph.node}

    pipe = results["pipeline"]
    assert pipe["fresh_run"] and pipe["wall_seconds"] > 0
    stages = {s["stage"]: s for s in pipe["stages"]}
    for name in ("validate", "teacher", "distill", "prune", "quantize", "evaluate"):
        assert stages[name]["ran"] and stages[name]["wall_seconds"] > 0, name
    assert stages["teacher"]["compute_seconds"] > 0 and stages["distill"]["compute_seconds"] > 0
    assert 0.0 < pipe["non_compute_share"] < 1.0
    assert pipe["rerun_wall_seconds"] > 0 and pipe["rerun_trained_nothing"] is True
    assert pipe["register_seconds"] > 0

    targets = {t["name"]: t for t in results["targets"]}
    assert len(targets) == 15 and {"tiny_size_mb", "tiny_accuracy"} <= set(targets) and all(t["value"] is not None and t["met"] in (True, False)
                                      for t in targets.values())
    for key in ("A", "B", "E-quantize", "E-tiny"):  # timed once more at 1 thread
        assert rows[key]["latency_p50_ms_1_thread"] > 0

    files = results["files"]
    saved = json.loads(open(files["json"]).read())
    assert set(saved["models"]) == set(results["models"]) and saved["git"]["git_commit"]
    assert saved["versions"]["torch"] and saved["machine"]["cpu_count"]
    md = open(files["markdown"]).read()
    assert "Produced by `pytest`" in md and "Quick mode" in md and "paired bootstrap interval" in md
    assert "E-tiny: the tiny profile (`bench/sst2-tiny.params.yaml`)" in md
    for key in ROWS:
        assert f"| {key} |" in md
    for plot in ("latency", "size"):
        with open(files[plot], "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert files[plot].rsplit("/", 1)[-1] in md

    for key in ("E-quantize", "E-tiny"):
        assert_readme_snippet_scores_like_the_pipeline(Path(rows[key]["model_dir"]))


def assert_readme_snippet_scores_like_the_pipeline(model_dir: Path) -> None:
    """The README's "plain onnxruntime" lines, run on `model_dir`, give OnnxClassifier's logits."""
    import numpy as np

    from bench.workdir import REPO
    from distillery.onnx_model import OnnxClassifier

    readme = (REPO / "README.md").read_text()
    start = readme.index("**Scoring the final model with plain onnxruntime**")
    code = re.search(r"```python\n(.*?)```", readme[start:], re.S).group(1)
    default = '"bench/work/sst2/models/quantized"'
    assert default in code
    scope: dict = {}
    exec(code.replace(default, repr(str(model_dir))), scope)  # our own README's lines
    texts = ast.literal_eval(re.search(r"encode_batch\((\[.*?\])\)", code).group(1))
    expected = OnnxClassifier.from_dir(model_dir, threads=1).predict_logits(texts)
    # ONNX Runtime's int8 LSTM quantizes its inputs per thread's share of the batch (the snippet runs
    # on every core, the reference on one), which moves a BiLSTM's logits by a few 1e-4 (measured
    # 3.4e-4); the labels must be the same wherever the margin is wider than that.
    np.testing.assert_allclose(scope["logits"], expected, atol=2e-3)
    ranked = np.sort(expected, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > 4e-3
    assert (scope["logits"].argmax(axis=1) == expected.argmax(axis=1))[clear].all()
