"""Register step (after the DVC stages; not a DVC stage because it has side effects).

Registers the quantized model as a new version with alias `challenger` and lineage
tags, adds the champion comparison to the evaluate stage's threshold checks (the
champion re-scored on the current eval data, `gate.max_regression` as tolerance),
and moves `champion` to it only if every check passed. The full decision goes to
reports/promotion.json, the version's tags and the register run. All registry writes
happen here, in one task, under a lock, so concurrent pipeline runs cannot interleave them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
from importlib.metadata import version as pkg_version
from pathlib import Path

from distillery.config import Params
from distillery.gate import CHAMPION_CHECK, Check, GateDecision, decide_promotion
from distillery.lineage import content_md5, data_identity, git_lineage
from distillery.measure import FIGURES
from tasks.common import read_json, report_path, write_json_atomic
from distillery.serving_input import MAX_ROWS_KEY
from tasks.evaluate import champion_checks
from tasks.promotion import CHAMPION, aliases_by_version, ensure_champion, registry_lock
from tasks.task_identity import SIGNATURE_TAG, check_task_identity, differences
from tasks.validate import profile_tag

CHALLENGER = "challenger"
PROMOTION_REPORT = "promotion"  # reports/promotion.json: the last registration's full decision
DECISION_TAG = "gate_decision"  # the same decision, as JSON, on the registered version
SERVING_PACKAGES = ("onnxruntime", "numpy", "pandas", "transformers", "tokenizers")
INPUT_EXAMPLE = ["not bad at all", "the battery died after a day"]
PAIR_EXAMPLE = {"text": ["The company posted a profit.", "He left early."],
                "text_pair": ["A profit was reported by the firm.", "The meeting ran late."]}


def input_example(model_dir: Path):
    """The example the signature is inferred from: strings, or for a sentence-pair model a frame
    with its two columns (both then required by `mlflow models serve`)."""
    import pandas as pd

    from distillery.onnx_model import read_input_meta

    columns = read_input_meta(model_dir)["input_columns"]
    return INPUT_EXAMPLE if len(columns) == 1 else pd.DataFrame(dict(zip(columns, PAIR_EXAMPLE.values())))


def output_signature(model_dir: Path):
    """The served model's outputs (label, one probability per class). No input schema: MLflow's
    enforcement would coerce null and non-text values to strings before the pyfunc could refuse
    them (tasks/pyfunc_model.py checks its input as training checks data)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    labels = json.loads((Path(model_dir) / "labels.json").read_text())["labels"]
    return ModelSignature(inputs=None, outputs=Schema(
        [ColSpec("string", "label")] + [ColSpec("double", f"prob_{label}") for label in labels]))


def log_served_model(model_dir: Path, max_rows_per_request: int | None):
    """Log `model_dir` (an int8 ONNX model directory) as the served pyfunc, in the active MLflow run:
    tasks/pyfunc_model.py with the directory as its `model_dir` artifact and the `distillery` package
    as its code, so loading needs only the serving dependencies. Returns MLflow's ModelInfo."""
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(__file__).resolve().parents[1] / "distillery")],
        pip_requirements=[f"{p}=={pkg_version(p)}" for p in SERVING_PACKAGES],
        # Outputs: label + class probabilities; the pyfunc checks its input itself
        # (one text column, or both columns of a sentence-pair model).
        input_example=input_example(model_dir), signature=output_signature(model_dir),
        model_config={MAX_ROWS_KEY: max_rows_per_request})


def lineage_tags(root: Path, params: Params, flow_run_id: str | None) -> dict[str, str]:
    teacher = read_json(report_path(root, params, "teacher")).get("identity", {})
    return {**git_lineage(root), **data_identity(root, params),
            "params_hash": params.section_hash(),
            "teacher": teacher.get("name_or_path", params.teacher.model),
            "teacher_source": str(teacher.get("source", "")),
            "prefect_flow_run_id": flow_run_id or "none",
            **profile_tag(root, params)}  # what the next run's length-shift check compares with


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _find_same_model(client, name: str, md5: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.tags.get("model_md5") == md5 and v.tags.get(REGISTRATION_TAG) != ABANDONED]
    return max(same, key=lambda v: int(v.version)) if same else None


def rescore_champion(client, name: str, version: str, root: Path, params: Params) -> dict | None:
    """Score the current champion, as served (its registered pyfunc), on the *current* eval split,
    so a changed eval set cannot promote a worse model. None when it cannot be scored."""
    import mlflow
    import numpy as np
    import pandas as pd

    from distillery.data import load_split
    from distillery.measure import classification_metrics

    vdir = Path(root) / params.paths.validated_dir
    labels = json.loads((vdir / "labels.json").read_text())["labels"]
    eval_set = load_split(vdir / "eval.parquet")
    try:
        # The per-request row limit is for served requests; here the whole eval split is one call.
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}", model_config={MAX_ROWS_KEY: None})
        inputs = list(eval_set.texts) if eval_set.pairs is None else \
            pd.DataFrame({"text": eval_set.texts, "text_pair": eval_set.pairs})
        predicted = model.predict(inputs)["label"].astype(str).tolist()
    except Exception as exc:  # an old or foreign model: fall back to its recorded figures, and say so
        print(f"register: champion v{version} could not be re-scored on the current eval data: {exc}")
        return None
    index = {lab: i for i, lab in enumerate(labels)}
    # A label the current task does not know counts as wrong (one-hot on a column of its own).
    pred = np.array([index.get(p, len(labels)) for p in predicted])
    onehot = np.eye(len(labels) + 1)[pred][:, : len(labels)]
    onehot[pred == len(labels)] = -1.0
    figures = classification_metrics(onehot, eval_set.labels, len(labels))
    figures["predictions"] = np.where(pred == len(labels), -1, pred).tolist()  # -1: a label this task lacks
    return figures


def champion_figure(client, name: str, champ, root: Path, params: Params) -> tuple[float | None, str, list | None]:
    """The champion's gate metric, where it came from, and its per-row eval predictions (for the
    paired comparison): re-scored through its registered pyfunc on the current eval data, or (if
    that fails) the figure recorded when it was registered (no predictions then)."""
    metric = params.gate.metric
    if champ is None:
        return None, "no champion yet", None
    rescored = rescore_champion(client, name, str(champ.version), root, params)
    if rescored is not None:
        return float(rescored[metric]), "re-scored on the current eval data", rescored["predictions"]
    if f"metric.{metric}" in champ.tags:
        return float(champ.tags[f"metric.{metric}"]), "recorded figure (could not re-score)", None
    return None, "champion could not be scored", None


def recorded_decision(version, thresholds: GateDecision) -> dict:
    """The full decision recorded on a registered version; for a version registered before the
    champion check existed, the current thresholds plus the check marked as not recorded."""
    raw = version.tags.get(DECISION_TAG)
    if raw:
        return json.loads(raw)
    return thresholds.with_check(Check(CHAMPION_CHECK, True, None, None,
                                       f"{CHAMPION_CHECK}: skipped: not recorded for version {version.version}",
                                       skipped=True)).to_dict()


# Registration is a transaction on the registry, which has none: the version is created with its
# lineage and a `registration=pending` marker in one call; the decision is recorded next, then the
# aliases move, and the marker is cleared last. A registration killed in between leaves a pending
# version that the next registration (or `distillery status`) completes from its recorded decision,
# or marks abandoned when no decision was recorded; no alias ever points at an undecided version.
REGISTRATION_TAG = "registration"
PENDING, ABANDONED = "pending", "abandoned"
PENDING_BY_TAG = "registration_pending_by"  # {"pid", "host", "at"}: who is registering it
STALE_AFTER_S = 3600  # a pending version of another machine is taken as orphaned after this
FAULT_ENV = "DISTILLERY_FAULT"  # tests only: "register:<step>" SIGKILLs this process at that step
REGISTER_STEPS = ("after_log_model", "after_create", "after_decision", "after_challenger", "after_champion",
                  "after_clear")


def fault_point(step: str) -> None:
    """Deterministic fault injection for the tests: die here, as a kill -9 would, if asked to."""
    if os.environ.get(FAULT_ENV) == f"register:{step}":
        print(f"register: {FAULT_ENV} asks for a kill {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def _orphaned(version) -> bool:
    """Is the process that left this version pending gone? (Caller holds the registry lock, which
    every registration on this machine holds throughout; another machine's is judged by age.)"""
    import socket

    import psutil

    try:
        by = json.loads(version.tags.get(PENDING_BY_TAG, "{}"))
    except json.JSONDecodeError:
        by = {}
    if by.get("host") == socket.gethostname():
        try:
            alive = psutil.Process(int(by.get("pid", 0))).create_time() <= float(by.get("started", 0)) + 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            alive = False
        return not alive or int(by.get("pid", 0)) == os.getpid()
    created = dt.datetime.fromisoformat(by["at"]) if by.get("at") else None
    return created is None or (dt.datetime.now(dt.timezone.utc) - created).total_seconds() > STALE_AFTER_S


def pending_versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    return sorted((v for v in versions if v.tags.get(REGISTRATION_TAG) == PENDING), key=lambda v: int(v.version))


def recover_pending(client, name: str, *, orphaned_only: bool = True) -> list[dict]:
    """Complete or abandon the registrations a killed process left pending. Caller holds the lock.

    A version whose decision was recorded gets the aliases that decision gives it (idempotently:
    a move already made is not made twice), then its marker is cleared. One without a recorded
    decision is tagged abandoned, loses any alias, and is never promoted or reused."""
    done = []
    for v in pending_versions(client, name):
        if orphaned_only and not _orphaned(v):
            continue
        version = str(v.version)
        raw = v.tags.get(DECISION_TAG)
        if raw and v.tags.get("promotion_decided") == "true":
            promote = v.tags.get("promote") == "true"
            client.set_registered_model_alias(name, CHALLENGER, version)
            if promote:
                ensure_champion(client, name, version, kind="auto_promote", reason=v.tags.get("promotion", ""),
                                user=f"recovery of pipeline {v.tags.get('prefect_flow_run_id', 'local')}")
            client.set_model_version_tag(name, version, REGISTRATION_TAG, "complete")
            done.append({"version": version, "outcome": "completed", "promoted": promote})
        else:
            for alias in aliases_by_version(client, name).get(version, set()):
                client.delete_registered_model_alias(name, alias)
            client.set_model_version_tag(name, version, REGISTRATION_TAG, ABANDONED)
            client.set_model_version_tag(name, version, "abandoned_reason",
                                         "registration interrupted before its decision was recorded")
            done.append({"version": version, "outcome": ABANDONED, "promoted": False})
        print(f"register: version {version} of an interrupted registration {done[-1]['outcome']}")
    return done


def recover_if_idle(client, name: str, wait_s: float = 5.0) -> list[dict] | None:
    """`distillery status`: settle interrupted registrations, unless a registration holds the lock
    now (then None: nothing is touched)."""
    from filelock import Timeout

    lock = registry_lock(client.tracking_uri)
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        return None
    try:
        return recover_pending(client, name)
    finally:
        lock.release()


def register_model(root: Path, params: Params, client, exp_id: str, parent_run_id: str,
                   flow_run_id: str | None, new_task_reason: str | None = None) -> dict:
    """Register the final model, decide its promotion and write the decision record.

    Returns the record also written to reports/promotion.json (not a DVC output: it is the
    registry's own record, and rewriting the evaluate stage's gate.json would make DVC re-run it).
    """
    import socket

    import mlflow
    import psutil

    name, metric = params.register.model_name, params.gate.metric
    qdir = Path(root) / params.paths.quantized_dir
    gate = read_json(report_path(root, params, "gate"))
    thresholds = GateDecision.from_dict(gate)
    figures = read_json(report_path(root, params, "quantize"))
    md5 = content_md5(qdir)  # DVC's hash of the directory, as dvc.lock records it
    base = {"model_name": name, "metric": metric, "candidate_value": float(figures[metric]),
            "flow_run_id": flow_run_id, "decided_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    with registry_lock(client.tracking_uri):
        recovered = recover_pending(client, name)
        # A champion of another task is never compared with nor replaced, unless --new-task says so.
        identity = check_task_identity(root, params, client, new_task_reason)
        existing = _find_same_model(client, name, md5)
        if existing is not None:
            # Nothing changed since this exact model was registered: no duplicate version, and its
            # recorded decision stands.
            aliases = sorted(aliases_by_version(client, name).get(str(existing.version), set()))
            record = {**base, "version": str(existing.version), "new_version": False, "aliases": aliases,
                      "promoted": CHAMPION in aliases, "champion": None, "recovered": recovered,
                      "reason": f"model unchanged: identical to version {existing.version}, nothing registered",
                      "decision": recorded_decision(existing, thresholds)}
            write_json_atomic(report_path(root, params, PROMOTION_REPORT), record)
            return record
        run = client.create_run(exp_id, run_name="register", tags={"mlflow.parentRunId": parent_run_id,
                                                                   "distillery.stage": "register"})
        with mlflow.start_run(run_id=run.info.run_id):
            info = log_served_model(qdir, params.register.max_rows_per_request)
        fault_point("after_log_model")
        # 1. The version, its lineage and the pending marker in one call: no version without lineage.
        me = psutil.Process()
        pending_by = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": me.create_time(),
                                 "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        tags = {REGISTRATION_TAG: PENDING, PENDING_BY_TAG: pending_by,
                **lineage_tags(root, params, flow_run_id), "model_md5": md5,
                SIGNATURE_TAG: json.dumps(identity["signature"]),
                **{f"metric.{k}": str(figures[k]) for k in FIGURES}}
        mv = mlflow.register_model(info.model_uri, name, await_registration_for=60, tags=tags)
        mv_version = str(mv.version)
        fault_point("after_create")
        # 2. The decision, recorded before any alias moves.
        champ = previous = _champion(client, name)
        changed = ""
        if identity["new_task"]:  # the champion is of another task: not a baseline, never re-scored
            champ = None
            changed = "; ".join(differences(identity["signature"], identity["champion_signature"]))
        champ_value, champ_source, champ_pred = (None, "not compared (gate.max_regression is null)", None) \
            if params.gate.max_regression is None and params.gate.max_slice_regression is None \
            else champion_figure(client, name, champ, root, params)
        decision = thresholds
        if identity["new_task"]:
            checks = [Check(CHAMPION_CHECK, True, None, params.gate.max_regression,
                            f"{CHAMPION_CHECK}: skipped: champion v{previous.version} is of another task ({changed}); "
                            f"--new-task: {new_task_reason}", skipped=True)]
        else:
            checks = champion_checks(root, params, figures, gate, champ_value, champ_source, champ_pred,
                                     str(champ.version) if champ is not None else None,
                                     f"models:/{name}/{champ.version}" if champ is not None else None)
        for check in checks:
            decision = decision.with_check(check)
        promotion = decide_promotion(decision)
        client.update_model_version(name, mv_version, description=describe(figures, decision))
        decided = {"gate_passed": str(decision.passed).lower(), "gate_reasons": "; ".join(decision.reasons)[:4000],
                   DECISION_TAG: json.dumps(decision.to_dict(), sort_keys=True),
                   "promotion": promotion.reason, "promote": str(promotion.promote).lower()}
        if promotion.promote and previous is not None:
            decided["previous_champion"] = str(previous.version)
        for k, v in decided.items():
            client.set_model_version_tag(name, mv_version, k, v)
        client.set_model_version_tag(name, mv_version, "promotion_decided", "true")  # the decision is complete
        fault_point("after_decision")
        # 3. The aliases, from the recorded decision.
        client.set_registered_model_alias(name, CHALLENGER, mv_version)
        fault_point("after_challenger")
        if promotion.promote:
            kind, why = ("auto_promote", promotion.reason) if not identity["new_task"] else (
                "new_task", f"new task replaces champion v{previous.version} ({changed}): {new_task_reason}")
            ensure_champion(client, name, mv_version, kind=kind, reason=why, user=f"pipeline {flow_run_id or 'local'}")
        fault_point("after_champion")
        # 4. Done: the marker goes last.
        client.set_model_version_tag(name, mv_version, REGISTRATION_TAG, "complete")
        fault_point("after_clear")
        record = {**base, "version": mv_version, "new_version": True, "promoted": promotion.promote,
                  "aliases": [CHALLENGER] + ([CHAMPION] if promotion.promote else []),
                  "reason": promotion.reason, "model_uri": f"models:/{name}/{mv_version}", "recovered": recovered,
                  "champion": None if champ is None else {"version": str(champ.version), "value": champ_value,
                                                           "source": champ_source},
                  "decision": decision.to_dict(), "task": identity}
        client.log_dict(run.info.run_id, record, "promotion.json")
        client.set_terminated(run.info.run_id)
    write_json_atomic(report_path(root, params, PROMOTION_REPORT), record)
    return record


def describe(figures: dict, decision: GateDecision) -> str:
    rows = "\n".join(f"| {k} | {figures[k]:.4g} |" for k in FIGURES)
    checks = "\n".join(f"- {r}" for r in decision.reasons) or "- (no thresholds set)"
    verdict = "passed" if decision.passed else "failed"
    return f"Distilled, pruned, int8 ONNX model.\n\n| figure | value |\n|---|---|\n{rows}\n\nGate {verdict}:\n{checks}\n"


def registry_status(client, name: str) -> dict:
    """Champion, challenger and recent versions with their figures (for `distillery status`)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    aliases = aliases_by_version(client, name)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), set())),
                     "gate_passed": v.tags.get("gate_passed"), "promotion": v.tags.get("promotion", ""),
                     "registration": v.tags.get(REGISTRATION_TAG, "complete"),
                     **{k: v.tags.get(f"metric.{k}") for k in FIGURES}})
    by_alias = {a: r["version"] for r in rows for a in r["aliases"]}
    return {"model_name": name, "champion": by_alias.get(CHAMPION), "challenger": by_alias.get(CHALLENGER),
            "versions": rows}

