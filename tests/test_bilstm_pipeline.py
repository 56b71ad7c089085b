"""End to end with a BiLSTM student: the Prefect flow over the DVC stages on the tiny demo data,
from validation through registration, and the registered pyfunc serving it."""

from __future__ import annotations

import json

import onnx
import pytest
import yaml

from distillery.env import configure_environment
from tests.helpers import make_project, tiny_params
from tests.test_pipeline_e2e import client, run_flow, versions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    from distillery.demo_data import make_demo_dataset

    params = tiny_params(student={"architecture": "bilstm",
                                  "bilstm": {"hidden_size": 16, "layers": 2, "classifier_hidden": 16,
                                             "pooling": "max", "embedding_dim": 24}},
                         distill={"loss": "mse_logits", "alpha": 0.5, "epochs": 2, "learning_rate": 3e-3})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("bilstm"), params, [*train.text, *eval_.text])
    configure_environment(root)
    return root


def test_bilstm_student_runs_the_whole_pipeline_and_is_served(project):
    import mlflow

    from distillery.onnx_model import OnnxClassifier

    result = run_flow(project)
    assert all(result["ran"].values()), result["ran"]
    reports = {s: yaml.safe_load((project / "reports" / f"{s}.json").read_text())
               for s in ("teacher", "distill", "prune", "quantize")}
    config = json.loads((project / "models/student/config.json").read_text())
    assert config["architecture"] == "bilstm" and config["num_layers"] == 2 and config["embedding_dim"] == 24
    assert reports["distill"]["student"]["architecture"] == "bilstm"
    assert reports["distill"]["student"]["vocab_size"] < reports["distill"]["student"]["teacher_vocab"]
    assert reports["distill"]["params"] < reports["teacher"]["params"]
    assert "not applicable" in reports["prune"]["pruning"]
    assert reports["prune"]["params"] == reports["distill"]["params"]
    assert reports["prune"]["accuracy"] == reports["distill"]["accuracy"]  # the same model, unchanged
    ops = {n.op_type for n in onnx.load(str(project / "models/quantized/model.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    assert reports["quantize"]["size_mb"] < reports["prune"]["size_mb"]

    reg = result["registration"]
    assert reg["version"] == "1" and reg["promoted"] is True
    assert versions(project) == {"1": {"challenger", "champion"}}
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/distillery-student@champion")
    texts = ["the staff were great", "the screen died after a day", "it was fine"]
    got = served.predict(texts)
    local = OnnxClassifier.from_dir(project / "models/quantized").predict(texts)
    assert list(got["label"]) == [p["label"] for p in local]
    assert client(project).get_model_version("distillery-student", "1").tags["gate_passed"] == "true"
