"""End to end on a sentence-pair task: the Prefect flow over the DVC stages on a tiny random-init
BERT and ~90 synthetic pairs (a TSV as GLUE ships it: byte-order mark, bare quote characters,
extra columns, labels spelt 1 / 0 in train and 1.0 / " 0 " in eval), through registration; the
registered pyfunc and `mlflow models serve` take two text columns and refuse a request without
the second one with a clear 4xx."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from distillery.env import configure_environment
from tests.helpers import free_port, make_project, tiny_params, wait_for_http
from tests.test_pipeline_e2e import run_flow, versions

pytestmark = pytest.mark.slow
BIN = sys.executable.rsplit("/", 1)[0]
COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
FILLER = "the a my his her car house shirt door wall \"big\" small old new".split()


def pair_rows(n: int, seed: int, one: str, zero: str) -> list[str]:
    """TSV lines: id, quality (the label: 1 when both texts name the same colour), text, text pair."""
    rng, lines = random.Random(seed), []
    for i in range(n):
        same = i % 2 == 0
        a = rng.choice(COLOURS)
        b = a if same else rng.choice([c for c in COLOURS if c != a])
        left = " ".join(rng.sample(FILLER, 3) + [a] + rng.sample(FILLER, 2))
        right = " ".join(rng.sample(FILLER, 2) + [b] + rng.sample(FILLER, 3))
        lines.append(f"{seed}{i}\t{one if same else zero}\t{left}\t{right}")
    return lines


def write_tsv(path, lines: list[str]) -> None:
    header = "#1 ID\tQuality\t#1 String\t#2 String"
    path.write_text("\ufeff" + "\n".join([header, *lines]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    params = tiny_params(student={"trim_vocabulary": True})
    params["data"].update(train_path="pairs_train.tsv", eval_path="pairs_eval.tsv", text_column="#1 String",
                          text_pair_column="#2 String", label_column="Quality", labels=None, max_length=24,
                          truncation="head_tail")
    params["gate"]["max_regression"] = None
    root = tmp_path_factory.mktemp("pairs")
    train, eval_ = pair_rows(60, 1, "1", "0"), pair_rows(30, 2, "1.0", " 0 ")
    write_tsv(root / "pairs_train.tsv", train)
    write_tsv(root / "pairs_eval.tsv", eval_)
    texts = [t for line in train + eval_ for t in line.split("\t")[2:]]
    root = make_project(root, params, texts)
    configure_environment(root)
    return root


def test_pair_task_runs_the_whole_pipeline_and_is_served_with_two_columns(project):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from distillery.onnx_model import OnnxClassifier

    result = run_flow(project)
    assert all(result["ran"].values()), result["ran"]
    validate = json.loads((project / "reports/validate.json").read_text())
    assert validate["labels"] == ["0", "1"]  # "1" and "1.0", "0" and " 0 " are one class each
    for stage in ("teacher", "student", "pruned", "quantized"):
        meta = json.loads((project / "models" / stage / "distillery.json").read_text())
        assert meta["input_columns"] == ["text", "text_pair"] and meta["truncation"] == "head_tail"
    reports = {s: yaml.safe_load((project / "reports" / f"{s}.json").read_text()) for s in ("teacher", "quantize")}
    assert reports["quantize"]["size_mb"] < reports["teacher"]["size_mb"]
    assert result["registration"]["version"] == "1" and versions(project) == {"1": {"challenger", "champion"}}
    report = (project / "reports/index.html").read_text()
    assert "text pair &#x27;#2 String&#x27;" in report or "text pair '#2 String'" in report

    pairs = [("my red car", "the red house"), ("a blue door", "his green shirt")]
    expected = [p["label"] for p in OnnxClassifier.from_dir(project / "models/quantized").predict(pairs)]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/distillery-student@champion")
    # No MLflow input schema (it would coerce null and non-text values): the pyfunc checks its input
    # against the columns the model directory declares, as the next lines show.
    assert served.metadata.get_input_schema() is None
    got = served.predict(pd.DataFrame({"text": [a for a, _ in pairs], "text_pair": [b for _, b in pairs]}))
    assert got["label"].astype(str).tolist() == expected
    with pytest.raises(MlflowException, match="text_pair"):
        served.predict(pd.DataFrame({"text": ["only one text"]}))

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([f"{BIN}/mlflow", "models", "serve", "-m", "models:/distillery-student@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def post(columns: list[str], rows: list[list[str]]):
        body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(req, timeout=30)

    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        answer = json.loads(post(["text", "text_pair"], [list(p) for p in pairs]).read())["predictions"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(["text"], [["only one text"]])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert [row["label"] for row in answer] == expected
    assert 400 <= refused.value.code < 500
    assert "text_pair" in refused.value.read().decode()
