"""End to end: the Prefect flow over the DVC stages on a random-init tiny BERT and ~90 rows,
with MLflow and Prefect state in temp dirs. The tests share one project, built once, and the
story of its runs (`STEPS`): first run (no champion yet), no-change rerun, a better challenger
promoted, a challenger failing a threshold, a worse challenger kept by the champion comparison,
promotion and rollback, and a run whose data fails validation. Each test reaches the step it
checks (tests/helpers.Story), so any test runs alone too.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from distillery.env import configure_environment
from distillery.measure import FIGURES
from tasks.graph import stage_names
from tests.helpers import (Story, external_refs, free_port, make_cue_dataset, make_project, shift_labels,
                           tiny_params, wait_for_http)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NAME = "distillery-student"
CHAMPION_CHECK = "regression_vs_champion"
# Files the pipeline writes that are deliberately not DVC outputs: the register step's record of its
# decision, and the run report written after it. They lie outside every out, so DVC neither tracks
# them nor sees a stage as changed by them.
REGISTRY_RECORDS = {"reports/promotion.json", "reports/index.html"}
# Where the report test keeps its screenshot of the page (default: the test's temp folder).
SCREENSHOT_ENV = "DISTILLERY_REPORT_SCREENSHOT"
# Learnable data for the champion comparison tests (see make_cue_dataset): the teacher needs more
# epochs than on the demo data to fit it.
# A deliberately different dataset (shorter texts): its length drift against the champion's data is
# expected, so the drift check only warns here (the bad-input corpus tests the failing case).
CUE_DATA = ["data.train_path=cue_train.csv", "data.eval_path=cue_eval.csv",
            "teacher.epochs=20", "teacher.learning_rate=0.003", "distill.epochs=3",
            "validate.length_shift.fail_psi=null"]
SHIPPED_FAIL_PSI = tiny_params()["validate"]["length_shift"]["fail_psi"]


def validate_run_metrics(root: Path, parent_run_id: str) -> dict[str, float]:
    c = client(root)
    runs = c.search_runs([c.get_run(parent_run_id).info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.mlflow.runName = 'validate'")
    assert len(runs) == 1
    return runs[0].data.metrics


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    from distillery.demo_data import make_demo_dataset

    params = tiny_params()
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    cue_train, cue_eval = make_cue_dataset()
    root = tmp_path_factory.mktemp("project")
    cue_train.to_csv(root / "cue_train.csv", index=False)
    cue_eval.to_csv(root / "cue_eval.csv", index=False)
    shift_labels(cue_train).to_csv(root / "cue_train_shifted.csv", index=False)
    texts = [*train.text, *eval_.text, *cue_train.text, *cue_eval.text]
    root = make_project(root, params, texts)
    configure_environment(root)
    return root


@pytest.fixture(scope="module")
def story(project):
    return Story(project, STEPS)


def run_flow(root: Path, overrides: list[str] | None = None) -> dict:
    from distillery_cli.cli import prepare_params
    from flows.pipeline import pipeline

    prepare_params(root, None, overrides or [])
    return pipeline(project_dir=str(root))


def client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(root: Path) -> dict[str, set]:
    from tasks.register import aliases_by_version

    c = client(root)
    aliases = aliases_by_version(c, "distillery-student")
    return {str(v.version): aliases.get(str(v.version), set())
            for v in c.search_model_versions("name='distillery-student'")}


def mtimes(root: Path, *dirs: str) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in (root / d).rglob("*") if p.is_file()}


def prefect_artifact_markdown(flow_run_id: str, key: str = "distillery-pipeline") -> str:
    """A markdown artifact the flow run created (read back from the Prefect API)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))
    arts = [a for a in arts if a.key]  # a failed flow run also has Prefect's own record of its result, keyless
    assert sorted(a.key for a in arts if a.type != "progress") == ["distillery-pipeline", "distillery-validation"]
    return next(a.data for a in arts if a.key == key)


def promotion_record(root: Path) -> dict:
    return json.loads((root / "reports/promotion.json").read_text())


def checks_by_name(decision: dict) -> dict[str, dict]:
    return {c["name"]: c for c in decision["checks"]}


def rerun_unchanged(root: Path) -> dict:
    before = {"decision": promotion_record(root)["decision"],
              "mtimes": mtimes(root, "models", "data/validated", "data/teacher_logits", "reports")}
    return {"before": before, "result": run_flow(root)}


def promote_and_roll_back(root: Path) -> dict:
    """The CLI's promotion commands, in order, with the registry after each."""
    out = {}
    for key, args in (("refused", ["promote", "3"]), ("worse", ["promote", "4"]),
                      ("no_reason", ["promote", "3", "--force"]),
                      ("forced", ["promote", "3", "--force", "--reason", "size budget waived for the demo"]),
                      ("back", ["rollback"]), ("further", ["rollback"]), ("nothing_before", ["rollback"])):
        out[key] = cli(root, *args)
        out[f"{key}.versions"] = versions(root)
        if key == "back":
            from tasks.promotion import history

            out["back.history"] = [(h["kind"], h["from"], h["version"]) for h in history(client(root), NAME)]
            out["back.status"] = cli(root, "status").stdout
    return out


def data_failing_validation(root: Path) -> dict:
    from flows.pipeline import StageFailed

    bad = root / "bad_train.csv"
    good = (root / "data/demo/train.csv").read_text().splitlines()
    bad.write_text("\n".join(good[:30] + ["a perfectly fine sentence,not-a-label"]) + "\n")
    teacher_before = mtimes(root, "models/teacher")
    try:
        run_flow(root, ["data.train_path=bad_train.csv"])
    except StageFailed as exc:
        return {"error": exc, "teacher_before": teacher_before}
    return {"error": None, "teacher_before": teacher_before}


STEPS = {  # the project's story, in order (each step once per module)
    "first_run": run_flow,
    "rerun_unchanged": rerun_unchanged,
    "better_challenger": lambda root: run_flow(root, CUE_DATA),
    "challenger_failing_a_threshold": lambda root: run_flow(root, ["prune.ffn_fraction=0.75",
                                                                   "gate.max_size_mb=0.0001"]),
    "worse_challenger": lambda root: run_flow(root, [
        "data.train_path=cue_train_shifted.csv", "prune.ffn_fraction=0.5", "gate.max_size_mb=10.0",
        f"validate.length_shift.fail_psi={SHIPPED_FAIL_PSI}"]),
    "promote_and_roll_back": promote_and_roll_back,
    "data_failing_validation": data_failing_validation,
}


def test_first_run_trains_every_stage_and_registers_champion(project, story):
    result = story.reach("first_run")
    assert all(result["ran"].values()), result["ran"]
    reports = {s: yaml.safe_load((project / "reports" / f"{s}.json").read_text())
               for s in ("teacher", "distill", "prune", "quantize")}
    for stage, rep in reports.items():
        assert set(FIGURES) <= set(rep), stage
        assert 0.0 <= rep["accuracy"] <= 1.0 and rep["size_mb"] > 0 and rep["latency_p50_ms"] > 0
    assert reports["teacher"]["finetuned"] is True  # the tiny encoder had no head for the labels
    assert reports["distill"]["params"] < reports["teacher"]["params"]
    assert reports["prune"]["params"] < reports["distill"]["params"]  # heads and neurons removed
    assert reports["quantize"]["size_mb"] < reports["prune"]["size_mb"]  # int8
    for f in ("model.onnx", "labels.json", "tokenizer.json", "distillery.json"):
        assert (project / "models/quantized" / f).is_file(), f
    gate = yaml.safe_load((project / "reports/gate.json").read_text())
    assert gate["passed"] is True and len(gate["checks"]) == 4  # the evaluate stage: thresholds only

    reg = result["registration"]
    assert reg["version"] == "1" and reg["promoted"] is True
    # The champion comparison is a check of its own, skipped with its reason on the first run.
    assert result["gate"] == reg["decision"] and result["gate"]["passed"] is True
    champ_check = checks_by_name(result["gate"])[CHAMPION_CHECK]
    assert champ_check["status"] == "skipped" and champ_check["observed"] is None
    assert champ_check["reason"] == f"{CHAMPION_CHECK}: skipped: no champion yet"
    assert champ_check["threshold"] == 0.02  # gate.max_regression in the shipped params
    # Each stage against the teacher, paired on the same eval rows, and the fidelity to it.
    summary = yaml.safe_load((project / "reports/evaluate.json").read_text())
    rows = {r["stage"]: r for r in summary["table"]}
    assert "vs_teacher" not in rows["teacher"] and rows["teacher"]["fidelity"] == 1.0
    for stage in ("distill", "prune", "quantize"):
        vs = rows[stage]["vs_teacher"]
        assert vs["ci_low"] <= vs["difference"] <= vs["ci_high"] and vs["n"] == len(reports[stage]["predictions"])
        assert vs["difference"] == pytest.approx(reports[stage]["accuracy"] - reports["teacher"]["accuracy"])
        agree = np.mean(np.array(reports[stage]["predictions"]) == np.array(reports["teacher"]["predictions"]))
        assert rows[stage]["fidelity"] == pytest.approx(agree)
    assert gate["fidelity"] == rows["quantize"]["fidelity"]
    assert [c["name"] for c in result["gate"]["checks"]] == [c["name"] for c in gate["checks"]] + [CHAMPION_CHECK]
    record = promotion_record(project)
    assert record == reg and record["champion"] is None
    assert "no champion yet" in record["reason"] and record["decision"]["reasons"][-1] == champ_check["reason"]
    assert versions(project) == {"1": {"challenger", "champion"}}
    tags = client(project).get_model_version("distillery-student", "1").tags
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
    assert tags["git_dirty"] in ("true", "false")
    assert re.fullmatch(r"[0-9a-f]{32}", tags["data_md5_train"])
    assert re.fullmatch(r"[0-9a-f]{16}", tags["params_hash"])
    assert tags["prefect_flow_run_id"] == result["flow_run_id"]
    assert tags["teacher"] and tags["gate_passed"] == "true"
    assert json.loads(tags["gate_decision"]) == reg["decision"]

    c = client(project)
    parent = c.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["gate.size_mb"] == "pass"
    assert parent.data.metrics["gate.size_mb.observed"] == pytest.approx(reports["quantize"]["size_mb"])
    assert parent.data.tags[f"gate.{CHAMPION_CHECK}"] == "skipped"
    # Nothing was observed: NaN, so the metric names are the same in every run (see below).
    assert math.isnan(parent.data.metrics[f"gate.{CHAMPION_CHECK}.observed"])
    assert math.isnan(parent.data.metrics[f"gate.{CHAMPION_CHECK}.ci_low"])
    assert parent.data.metrics["quantize.accuracy"] == pytest.approx(reports["quantize"]["accuracy"])
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in children} == {
        "demo_data", "validate", "teacher", "teacher_folds", "soft_targets", "distill", "prune", "quantize", "evaluate",
        "register"}
    distill_run = next(r for r in children if r.info.run_name == "distill")
    assert distill_run.data.params["distill.temperature"] == "2.0"
    assert distill_run.data.metrics["accuracy"] == pytest.approx(reports["distill"]["accuracy"])

    markdown = prefect_artifact_markdown(result["flow_run_id"])
    assert "| quantize |" in markdown and "## Gate: PASSED" in markdown and "version 1" in markdown
    assert f"| {CHAMPION_CHECK} | - | 0.02 | skipped | no champion yet |" in markdown
    assert "| vs teacher (CI) | fidelity |" in markdown
    validation = prefect_artifact_markdown(result["flow_run_id"], "distillery-validation")
    assert validation.startswith("# Data validation: PASSED") and "no champion yet" in validation
    validate_run = next(r for r in children if r.info.run_name == "validate")
    artifacts = [a.path for a in c.list_artifacts(validate_run.info.run_id, "validation")]
    assert "validation/index.html" in artifacts  # the GX Data Docs, kept with the run
    profile = json.loads(tags["data_length_profile"])  # what the next run's drift check reads
    assert profile["train"]["rows"] == len(pd.read_parquet(project / "data/validated/train.parquet"))


def test_every_file_written_belongs_to_a_declared_output(project, story):
    from dvc.repo import Repo

    story.reach("first_run")
    with Repo(str(project)) as repo:
        outs = [str(o.def_path) for s in repo.index.stages for o in s.outs]
    tracked = set(subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True).stdout.split())
    for p in project.rglob("*"):
        rel = p.relative_to(project).as_posix()
        if not p.is_file() or rel in tracked or rel.split("/")[0] in (".git", ".dvc", "mlruns", ".prefect",
                                                                      "teacher_src"):
            continue
        if rel in ("dvc.lock", ".dvcignore") or rel.endswith(".gitignore"):
            continue
        under_an_out = any(rel == o or rel.startswith(o + "/") for o in outs)
        if rel in REGISTRY_RECORDS:
            assert not under_an_out, f"{rel} is the registry's record and must stay outside every DVC out"
            continue
        assert under_an_out, f"{rel} is written but not a DVC output"
    assert all((project / r).is_file() for r in REGISTRY_RECORDS)


def test_second_run_with_nothing_changed_trains_nothing(project, story):
    step = story.reach("rerun_unchanged")
    first_decision, before, result = step["before"]["decision"], step["before"]["mtimes"], step["result"]
    assert not any(result["ran"].values()), result["ran"]  # writing promotion.json changed no stage
    after = mtimes(project, "models", "data/validated", "data/teacher_logits", "reports")
    changed = {Path(p).relative_to(project).as_posix() for p in after if after[p] != before.get(p)}
    assert changed == REGISTRY_RECORDS  # the DVC outputs (gate.json too) are untouched
    assert result["registration"]["new_version"] is False
    assert versions(project) == {"1": {"challenger", "champion"}}
    # Nothing registered: the decision recorded on version 1 stands.
    assert promotion_record(project)["decision"] == first_decision == result["gate"]
    # Skipped stages still log their figures (read back from their metrics files).
    parent = client(project).get_run(result["mlflow_run_id"])
    first = yaml.safe_load((project / "reports/quantize.json").read_text())
    assert parent.data.metrics["quantize.accuracy"] == pytest.approx(first["accuracy"])


def test_champion_served_over_http_answers_like_the_pipeline(project, story):
    """`mlflow models serve` on the champion, real HTTP requests, answers equal the pipeline's own."""
    story.reach("rerun_unchanged")  # the champion is the model on disk (until a challenger comes)
    import json
    import signal
    import urllib.error
    import urllib.request

    from distillery.onnx_model import OnnxClassifier

    texts = ["the battery died after a day", "not bad at all", "it does what it says",
             "the staff were friendly but the room was filthy"]
    expected = [p["label"] for p in OnnxClassifier.from_dir(project / "models/quantized").predict(texts)]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/distillery-student@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"]
        refused = {}  # what training would refuse gets HTTP 400 and the reason, not a confident answer
        for bad in ({"inputs": [None]}, {"inputs": ["  "]}, {"inputs": [True]}, {"inputs": [7]},
                    {"dataframe_split": {"columns": ["review"], "data": [["fine"]]}},
                    {"dataframe_split": {"data": [["a", "b"]]}}):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(bad).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=30)
                refused[json.dumps(bad)] = 200
            except urllib.error.HTTPError as err:
                refused[json.dumps(bad)] = (err.code, "nothing scored" in err.read().decode())
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: it and its workers
        server.wait(timeout=30)
    assert [row["label"] for row in answer] == expected
    assert set(refused.values()) == {(400, True)}, refused
    for row in answer:
        probs = [v for k, v in row.items() if k.startswith("prob_")]
        assert len(probs) == 3 and abs(sum(probs) - 1.0) < 1e-4


def test_better_challenger_is_promoted_over_the_champion_rescored_on_the_current_data(project, story):
    """New, learnable data: the new model beats the champion scored on the *new* eval rows."""
    result = story.reach("better_challenger")
    # The guard saw the shift (it would have stopped the run at the shipped fail_psi) and let it through.
    assert validate_run_metrics(project, result["mlflow_run_id"])["length_shift.splits.train.psi"] > SHIPPED_FAIL_PSI
    reg = result["registration"]
    assert reg["version"] == "2" and reg["new_version"] is True and reg["promoted"] is True
    assert reg["champion"]["version"] == "1" and reg["champion"]["source"] == "re-scored on the current eval data"
    # A clear margin: the new model fits these rows; the demo-data champion never saw their like.
    assert reg["candidate_value"] > reg["champion"]["value"] + 0.3
    check = checks_by_name(result["gate"])[CHAMPION_CHECK]
    assert check["status"] == "pass"
    # Non-inferiority on the paired interval: observed is how far behind the interval's low end reaches.
    assert check["rule"] == "non_inferiority" and check["observed"] == pytest.approx(-check["comparison"]["ci_low"])
    assert check["comparison"]["difference"] == pytest.approx(reg["candidate_value"] - reg["champion"]["value"])
    assert f"vs champion v1, re-scored on the current eval data {reg['champion']['value']:.4f}" in check["reason"]
    assert reg["reason"].startswith("every check passed: champion moves to this version")
    assert versions(project) == {"1": set(), "2": {"challenger", "champion"}}
    from tasks.promotion import history

    c = client(project)
    last = history(c, NAME)[-1]
    assert (last["kind"], last["from"], last["version"]) == ("auto_promote", "1", "2")
    assert c.get_model_version(NAME, "2").tags["previous_champion"] == "1"
    parent = c.get_run(result["mlflow_run_id"])
    assert parent.data.tags[f"gate.{CHAMPION_CHECK}"] == "pass" and parent.data.tags["promoted"] == "true"
    assert parent.data.metrics[f"gate.{CHAMPION_CHECK}.observed"] == pytest.approx(check["observed"])
    assert parent.data.metrics[f"gate.{CHAMPION_CHECK}.ci_low"] == pytest.approx(check["comparison"]["ci_low"])
    assert parent.data.tags[f"gate.{CHAMPION_CHECK}.rule"] == "non_inferiority"


def test_every_run_logs_the_same_metric_names(project, story):
    """First run (no champion, every stage ran), no-change rerun (every stage skipped by DVC) and the
    challenger run (compared with a champion): the same metric names, on the parent run and on each
    stage's run, so runs line up column by column in MLflow's compare view."""
    story.reach("better_challenger")
    c = client(project)
    exp = c.get_experiment_by_name("distillery")
    parents = c.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName LIKE 'pipeline-%'",
                            order_by=["attributes.start_time ASC"])[:3]
    assert len(parents) == 3 and all(p.info.status == "FINISHED" for p in parents)
    assert set(parents[0].data.metrics) == set(parents[1].data.metrics) == set(parents[2].data.metrics)
    assert math.isnan(parents[0].data.metrics[f"gate.{CHAMPION_CHECK}.observed"])
    assert not math.isnan(parents[2].data.metrics[f"gate.{CHAMPION_CHECK}.observed"])
    for stage in ("teacher", "distill", "prune", "quantize", "evaluate"):
        keys = [{k for r in c.search_runs([exp.experiment_id], filter_string=(
                    f"tags.mlflow.parentRunId = '{p.info.run_id}' and tags.mlflow.runName = '{stage}'"))
                 for k in r.data.metrics} for p in parents]
        assert keys[0] and keys[0] == keys[1] == keys[2], stage
    # Progress shows in the Prefect UI: one progress artifact per stage task run, at 100% once done.
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as pc:
        arts = pc.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[UUID(parents[2].data.tags["prefect_flow_run_id"])])))
    progress = {a.key: a for a in arts if a.type == "progress"}
    assert set(progress) == {f"progress-{s.replace('_', '-')}" for s in stage_names(project)}
    assert all(a.data == 100.0 and a.task_run_id is not None for a in progress.values())
    assert progress["progress-distill"].description == "distill: ran"


def test_challenger_failing_a_threshold_is_registered_but_champion_stays(project, story):
    result = story.reach("challenger_failing_a_threshold")
    ran = result["ran"]
    assert not ran["teacher"] and not ran["distill"]  # only what changed is re-run
    assert ran["prune"] and ran["quantize"] and ran["evaluate"]
    assert result["gate"]["passed"] is False
    assert any("size_mb" in r and "FAILED" in r for r in result["gate"]["reasons"])
    reg = result["registration"]
    assert reg["promoted"] is False and "size_mb" in reg["reason"]
    assert reg["champion"]["version"] == "2"
    assert reg["champion"]["source"] == "re-scored on the current eval data"
    v2 = client(project).get_model_version(NAME, "2")
    # Same eval data, same model, served through its pyfunc: the recorded figure is reproduced.
    assert reg["champion"]["value"] == pytest.approx(float(v2.tags["metric.accuracy"]), abs=1e-9)
    assert checks_by_name(reg["decision"])[CHAMPION_CHECK]["status"] in ("pass", "fail")  # compared, either way
    assert versions(project) == {"1": set(), "2": {"champion"}, "3": {"challenger"}}


def test_worse_challenger_is_kept_by_the_champion_comparison_with_the_reason(project, story):
    """Every threshold passes, but the model (trained on shifted labels) is worse than the champion."""
    result = story.reach("worse_challenger")
    # The length guard is back on; the texts are the champion's (only the labels differ), so it passes.
    assert validate_run_metrics(project, result["mlflow_run_id"])["length_shift.splits.train.psi"] < 0.01
    thresholds = yaml.safe_load((project / "reports/gate.json").read_text())
    assert thresholds["passed"] is True  # the evaluate stage alone would have let it through
    reg = result["registration"]
    assert reg["version"] == "4" and reg["promoted"] is False
    assert versions(project) == {"1": set(), "2": {"champion"}, "3": set(), "4": {"challenger"}}
    decision = reg["decision"]
    assert decision["passed"] is False
    assert [c["name"] for c in decision["checks"] if c["status"] == "fail"] == [CHAMPION_CHECK]
    check = checks_by_name(decision)[CHAMPION_CHECK]
    champion_value, candidate = reg["champion"]["value"], reg["candidate_value"]
    assert candidate < champion_value - 0.3  # shifted labels cannot beat chance on the true ones
    comp = check["comparison"]
    assert check["observed"] == pytest.approx(-comp["ci_low"]) and check["threshold"] == 0.02
    assert comp["difference"] == pytest.approx(candidate - champion_value) and comp["ci_high"] < -0.02
    expected = (f"{CHAMPION_CHECK}: accuracy {candidate:.4f} vs champion v2, re-scored on the current eval data "
                f"{champion_value:.4f}: accuracy difference {comp['difference']:+.4f} (95% CI [{comp['ci_low']:+.4f}, "
                f"{comp['ci_high']:+.4f}], n={comp['n']}; McNemar exact p={comp['mcnemar']['p_value']:.3g} on "
                f"{comp['mcnemar']['only_candidate']}+{comp['mcnemar']['only_baseline']} discordant rows); "
                f"non-inferiority rule: CI lower bound {comp['ci_low']:+.4f} > -0.0200 required: FAILED")
    assert check["reason"] == expected
    assert reg["reason"] == f"kept as challenger, failed: {expected}"
    assert promotion_record(project) == reg
    c = client(project)
    tags = c.get_model_version(NAME, "4").tags
    assert tags["gate_passed"] == "false" and expected in tags["gate_reasons"] and tags["promotion"] == reg["reason"]
    parent = c.get_run(result["mlflow_run_id"])
    assert parent.data.tags[f"gate.{CHAMPION_CHECK}"] == "fail" and parent.data.tags["gate_passed"] == "false"
    assert parent.data.metrics[f"gate.{CHAMPION_CHECK}.observed"] == pytest.approx(check["observed"])
    markdown = prefect_artifact_markdown(result["flow_run_id"])
    assert "## Gate: FAILED" in markdown and f"| {CHAMPION_CHECK} |" in markdown and "| fail |" in markdown
    assert "kept as challenger" in markdown


def last_parent_run(root: Path):
    from tasks.run_report import last_pipeline_run

    c = client(root)
    return c.get_run(last_pipeline_run(c, c.get_experiment_by_name("distillery").experiment_id, root))


def test_run_report_opens_in_headless_chromium_with_its_plots_and_tables(project, story, tmp_path):
    """The last run's reports/index.html (the worse challenger above) is one self-contained page:
    Chromium fetches nothing, decodes both plots and lays out every table; the page is the parent
    run's MLflow artifact and the Prefect artifact links it."""
    from distillery.browser import open_page
    from distillery.config import load_params
    from tasks.run_report import gather

    story.reach("worse_challenger")
    page = project / "reports/index.html"
    html = page.read_text()
    assert external_refs(html) == []
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "report.png")
    state = open_page(page, shot)
    assert state["requests"] == []  # nothing fetched: no CDN, no external image
    assert shot.read_bytes().startswith(b"\x89PNG")
    images = {i["id"]: i for i in state["images"]}
    assert set(images) == {"plot-latency", "plot-size"}
    assert all(i["complete"] and i["width"] > 300 and i["height"] > 200 for i in images.values()), images
    tables = {t["id"] or f"{t['className']}-{i}": t for i, t in enumerate(state["tables"])}
    assert all(t["height"] > 0 for t in tables.values())
    rows = {k: t["rows"] for k, t in tables.items()}
    # stages: a header and the 9 stages of dvc.yaml (teacher_folds too: with cross-fitting off it writes its manifest)
    assert rows["stages"] == 10 and rows["gate"] == 5 and rows["validation"] == 2 and rows["lineage"] >= 9
    assert [r for k, r in rows.items() if k.startswith("confusion")] == [3, 3]  # teacher and final, 3 classes
    text = state["text"]
    assert "Gate FAILED" in text and "kept as challenger" in text and CHAMPION_CHECK in text
    assert "registered version 4" in text and "Data validation PASSED" in text

    # The plotted points: every stage of the run, and the champion (v2) re-scored on this run's eval data.
    parent = last_parent_run(project)
    data = gather(project, load_params(project / "params.yaml"), client(project), parent.info.run_id)
    record = promotion_record(project)
    assert [p["key"] for p in data["points"]] == ["teacher", "distill", "prune", "quantize", "champion v2"]
    assert data["points"][-1]["accuracy"] == pytest.approx(record["champion"]["value"])
    assert data["points"][3]["accuracy"] == pytest.approx(record["candidate_value"])
    lineage = dict(data["lineage"])
    assert lineage["registered version"] == f"{NAME} v4" and re.fullmatch(r"[0-9a-f]{40}", lineage["git_commit"])

    c = client(project)
    assert [a.path for a in c.list_artifacts(parent.info.run_id, "report")] == ["report/index.html"]
    logged = Path(c.download_artifacts(parent.info.run_id, "report/index.html", str(tmp_path)))
    assert logged.read_text() == html
    markdown = prefect_artifact_markdown(parent.data.tags["prefect_flow_run_id"])
    assert f"`{page}`" in markdown and f"runs:/{parent.info.run_id}/report/index.html" in markdown

    # `distillery report` rebuilds the same page for the last run (only the time it was written differs).
    from distillery_cli.cli import main

    assert main(["--project-dir", str(project), "report"]) == 0
    written = re.compile(r"report written [0-9T:+-]+")
    assert written.sub("", page.read_text()) == written.sub("", html)


def test_status_command_shows_champion_challenger_and_gate_decisions(project, story):
    story.reach("worse_challenger")
    out = subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), "status"],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "champion 2, challenger 4" in out.stdout
    assert "Last gate decision: FAILED (version 4" in out.stdout
    # The champion comparison's row: check, observed regression, threshold, result.
    assert re.search(rf"│ {CHAMPION_CHECK}\s+│\s+[\d.]+\s+│\s+0.02\s+│ fail", out.stdout), out.stdout
    assert "vs champion v2" in out.stdout
    for line in ("v4: gate FAILED; kept as challenger, failed: regression_vs_champion",
                 "v3: gate FAILED; kept as challenger, failed: size_mb", "v2: gate passed; every check passed"):
        assert line in out.stdout


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), *args],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


def test_promote_refuses_failed_gate_unless_forced_and_rollback_restores(project, story):
    out = story.reach("promote_and_roll_back")
    refused, worse = out["refused"], out["worse"]
    assert refused.returncode == 1 and "failed its gate" in refused.stderr and "size_mb" in refused.stderr
    # the champion comparison is part of the gate
    assert worse.returncode == 1 and "failed its gate" in worse.stderr and CHAMPION_CHECK in worse.stderr
    assert out["worse.versions"] == {"1": set(), "2": {"champion"}, "3": set(), "4": {"challenger"}}
    no_reason = out["no_reason"]
    assert no_reason.returncode == 1 and "--force needs --reason" in no_reason.stderr
    assert out["forced"].returncode == 0, out["forced"].stderr
    assert out["forced.versions"] == {"1": set(), "2": set(), "3": {"champion"}, "4": {"challenger"}}
    assert out["back"].returncode == 0, out["back"].stderr
    assert out["back.versions"] == {"1": set(), "2": {"champion"}, "3": set(), "4": {"challenger"}}
    assert out["back.history"] == [("auto_promote", None, "1"), ("auto_promote", "1", "2"),
                                   ("forced_promote", "2", "3"), ("rollback", "3", "2")]
    assert "size budget waived" in out["back.status"]
    further = out["further"]  # the champion before version 2
    assert further.returncode == 0, further.stderr
    assert out["further.versions"] == {"1": {"champion"}, "2": set(), "3": set(), "4": {"challenger"}}
    nothing_before = out["nothing_before"]
    assert nothing_before.returncode == 1 and "no earlier champion" in nothing_before.stderr


def test_data_failing_validation_stops_before_training_and_leaves_registry(project, story):
    step = story.reach("data_failing_validation")
    teacher_before = step["teacher_before"]
    assert step["error"] is not None, "the flow did not fail"
    msg = str(step["error"])
    assert "validate" in msg and "bad_train.csv" in msg and "not-a-label" in msg
    assert versions(project) == {"1": {"champion"}, "2": set(), "3": set(), "4": {"challenger"}}
    assert mtimes(project, "models/teacher") == teacher_before
    c = client(project)
    exp = c.get_experiment_by_name("distillery")
    last = c.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName LIKE 'pipeline-%'",
                         order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert last.info.status == "FAILED" and "bad_train.csv" in last.data.tags["failure"]
    # The failed run still has its report: where it stopped, and no figures an earlier run left on disk.
    report = (project / "reports/index.html").read_text()
    assert "RUN FAILED" in report and "bad_train.csv" in report and "not-a-label" in report
    assert re.search(r">validate</td><td[^>]*>failed<", report) and re.search(r">teacher</td><td[^>]*>not reached<", report)
    assert "Data validation <span class=\"verdict fail\">FAILED" in report
    from distillery.config import load_params
    from tasks.run_report import gather

    data = gather(project, load_params(project / "params.yaml", check_files=False), c, last.info.run_id)
    assert [p["key"] for p in data["points"]] == ["champion v1"] and data["confusion"] == [] and data["gate"] is None
    assert [a.path for a in c.list_artifacts(last.info.run_id, "report")] == ["report/index.html"]
    failed = prefect_artifact_markdown(last.data.tags["prefect_flow_run_id"])
    assert failed.startswith("# Distillery pipeline: FAILED") and "reports/index.html" in failed


def test_cli_rejects_bad_params_before_touching_anything(project):
    before = (project / "params.yaml").read_text()
    out = subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), "run", "--set", "distill.alpha=2"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "distill.alpha" in out.stderr and "less than or equal to 1" in out.stderr
    assert (project / "params.yaml").read_text() == before
