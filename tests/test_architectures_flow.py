"""The architecture matrix, whole-pipeline tier: for each supported encoder family, a tiny
random-init teacher (tests/tiny_families.py: config + `tokenizers`-trained tokenizer, nothing
downloaded) runs the Prefect flow on the demo data, through registration and a prediction from
the registered pyfunc. The flow's stage tasks run each stage's code in this process instead of
through `dvc repro` (one `distillery stage` subprocess per stage costs ~5 s of imports, 40 of a
family's 65 CPU seconds); the DVC path itself is tested by test_pipeline_e2e.py. The student is built from teacher layers, narrowed
(residual width, FFN) and trained with the intermediate hidden-state and attention losses; then
pruned and quantized to int8. Asserted per family: each stage's model is physically smaller
(tensor shapes, file bytes) and the int8 ONNX model agrees with the fp32 export on the eval rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import yaml

from distillery.env import configure_environment
from tests.helpers import make_project, tiny_params
from tests.test_pipeline_e2e import run_flow, versions
from tests.tiny_families import FAMILIES, NON_WORDPIECE, make_family_teacher

pytestmark = pytest.mark.slow


def family_params(family: str) -> dict:
    return tiny_params(
        data={"demo_rows": 120, "max_length": 32},
        student={"layers": [0, 2], "hidden_size": 16, "intermediate_size": 32, "importance_batches": 2,
                 "trim_vocabulary": True, "trim_positions": True},
        distill={"hidden_weight": 1.0, "attention_weight": 1.0, "epochs": 1},
        prune={"head_fraction": 0.5, "ffn_fraction": 0.5, "importance_batches": 1},
        measure={"latency_samples": 3, "warmup": 1, "throughput_batch_size": 8})


@pytest.fixture
def stages_in_process(monkeypatch):
    """The flow's stage tasks call the stage code directly (same code DVC's command runs)."""
    import contextlib

    import flows.pipeline
    from tests.helpers import run_stage

    def run_here(root, stage):
        with contextlib.chdir(root):
            run_stage(root, stage)
        return True

    monkeypatch.setattr(flows.pipeline, "run_dvc_stage", run_here)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_the_whole_pipeline_and_is_served(family, tmp_path_factory, prefect_harness, stages_in_process):
    import mlflow

    from distillery.demo_data import make_demo_dataset
    from distillery.onnx_model import OnnxClassifier
    from distillery.quantization import export_onnx
    from distillery.modeling import load_model_dir

    params = family_params(family)
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp(family), params, [*train.text, *eval_.text])
    shutil.rmtree(root / "teacher_src")
    make_family_teacher(root / "teacher_src", family, [*train.text, *eval_.text])
    configure_environment(root)

    result = run_flow(root)
    assert all(result["ran"].values()), result["ran"]
    reports = {s: yaml.safe_load((root / "reports" / f"{s}.json").read_text())
               for s in ("teacher", "distill", "prune", "quantize")}
    assert reports["teacher"]["params"] > reports["distill"]["params"] > reports["prune"]["params"]

    # shapes: 2 of 3 layers, 16 of 32 channels, pruned heads and neurons
    models = root / "models"
    config = {d: json.loads((models / d / "config.json").read_text()) for d in ("teacher", "student", "pruned")}
    assert config["teacher"]["model_type"] == config["pruned"]["model_type"]
    structure = config["pruned"]["distillery_structure"]
    assert len(structure["heads"]) == 2 and sum(structure["heads"]) < 2 * 2  # 2 heads of 8 at width 16, halved
    assert all(n <= 16 for n in structure["intermediate"])  # 32 FFN neurons per layer, halved
    student, *_ = load_model_dir(models / "pruned")
    teacher, *_ = load_model_dir(models / "teacher")
    t_table, s_table = teacher.get_input_embeddings().weight, student.get_input_embeddings().weight
    # residual width 32 -> 16 (ELECTRA: its 8-wide embeddings stay, embeddings_project narrows)
    assert s_table.shape[1] == (8 if family == "electra" else 16) and t_table.shape[1] == (8 if family == "electra" else 32)
    # Vocabulary trimmed to the training texts' pieces. The tiny byte-level BPE / Unigram tokenizers
    # were trained on these very texts, so they may keep every piece (plus what unseen text needs).
    if family in NON_WORDPIECE:
        assert s_table.shape[0] <= t_table.shape[0]
    else:
        assert s_table.shape[0] < t_table.shape[0]
    size = {d: (models / d / "model.safetensors").stat().st_size for d in ("teacher", "student", "pruned")}
    assert size["teacher"] > size["student"] > size["pruned"], size

    # int8 ONNX: smaller than the fp32 export of the same pruned model, and it agrees with it
    fp32_dir = tmp_path_factory.mktemp(f"{family}-fp32")
    for f in (models / "quantized").iterdir():
        if f.name != "model.onnx":
            shutil.copy(f, fp32_dir / f.name)
    export_onnx(student, fp32_dir / "model.onnx", 18, params["data"]["max_length"])
    int8_bytes, fp32_bytes = (models / "quantized/model.onnx").stat().st_size, (fp32_dir / "model.onnx").stat().st_size
    assert int8_bytes < fp32_bytes, (int8_bytes, fp32_bytes)  # tiny: graph and scales weigh as much as weights
    int8_graph = onnx.load(str(models / "quantized/model.onnx")).graph
    assert {"DynamicQuantizeMatMul", "MatMulInteger"} & {n.op_type for n in int8_graph.node}
    int8_weights = [t for t in int8_graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) >= 2 * 4  # q/k/v (or Wqkv), out, FFN in/out of both layers, embeddings
    texts = list(eval_.text)
    int8_pred = np.array([p["label"] for p in OnnxClassifier.from_dir(models / "quantized").predict(texts)])
    fp32_pred = np.array([p["label"] for p in OnnxClassifier.from_dir(fp32_dir).predict(texts)])
    assert (int8_pred == fp32_pred).mean() >= 0.9

    # registered and served: the champion pyfunc predicts what the local int8 model predicts
    assert result["registration"]["version"] == "1" and versions(root) == {"1": {"challenger", "champion"}}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/distillery-student@champion")
    got = served.predict(texts[:5])
    assert list(got["label"]) == list(int8_pred[:5])
