"""The run report: gather what one pipeline run produced and write `reports/index.html`.

Written by the flow at the end of every run, passed or failed (`distillery report` rebuilds it for
the project's last run). The run is the MLflow parent run: its nested runs say which stages it
reached, ran, skipped or failed, so a stage the run never reached is shown as such, never with the
figures an earlier run left on disk. Like reports/promotion.json, the page is not a DVC output
(it is written after every stage and would make DVC see a changed stage); it is logged to the
parent run as artifact `report/index.html`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from distillery.config import Params
from distillery.html_report import ReportError, render_report
from distillery.lineage import data_identity, git_lineage
from distillery.measure import FIGURES
from tasks.common import read_json, report_path
from tasks.evaluate import FINAL_STAGE, model_stages
from tasks.graph import stage_graph
from tasks.promotion import CHAMPION
from tasks.register import PROMOTION_REPORT
from tasks.tracking import PROJECT_TAG, STAGE_TAG

REPORT_FILE = "index.html"
ARTIFACT_DIR = "report"  # the parent run's artifact folder
LINEAGE_KEYS = ("git_commit", "git_dirty", "data_md5_train", "data_md5_eval", "params_hash", "teacher", "model_md5")


def report_file(root: Path, params: Params) -> Path:
    return Path(root) / params.paths.reports_dir / REPORT_FILE


def last_pipeline_run(client, exp_id: str, root: Path) -> str:
    """The newest parent run of this project (for `distillery report`)."""
    project = str(Path(root).resolve()).replace("'", "\\'")
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PROJECT_TAG}` = '{project}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise FileNotFoundError(f"no pipeline run of {root} in the MLflow store {client.tracking_uri}: "
                                "run `distillery run` first")
    return runs[0].info.run_id


def _figures(path: Path) -> dict:
    rep = read_json(path)
    missing = [k for k in FIGURES if k not in rep]
    if missing:
        raise ReportError(f"{path}: missing figure(s) {', '.join(missing)}")
    return rep


def _stage_rows(root: Path, params: Params, children: dict, record: dict | None) -> tuple[list[dict], dict]:
    """One row per stage with its state in this run; figures of the model stages it measured."""
    graph = stage_graph(root)
    rows, reports, compared = [], {}, model_stages(graph)
    for stage in graph:
        run = children.get(stage)
        if run is None:
            state = "not reached"
        elif run.info.status == "FAILED":
            state = "failed"
        else:
            state = "ran" if run.data.tags.get("distillery.ran") == "true" else "skipped (unchanged, DVC)"
        figures = None
        if stage in compared and state not in ("not reached", "failed"):
            reports[stage] = _figures(report_path(root, params, stage))
            figures = {k: reports[stage][k] for k in FIGURES}
        rows.append({"stage": stage, "state": state, "figures": figures})
    reg = ("not reached" if record is None else
           f"registered version {record['version']}" if record["new_version"] else record["reason"])
    rows.append({"stage": "register", "state": reg, "figures": None})
    return rows, reports


def _champion_point(client, params: Params, record: dict | None) -> dict | None:
    """The current champion: size and latency as recorded when it was registered; accuracy re-scored
    on this run's eval data when the register step did so, else as recorded."""
    from mlflow.exceptions import MlflowException

    name = params.register.model_name
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    tags, version = champ.tags, str(champ.version)
    if any(f"metric.{k}" not in tags for k in ("accuracy", "latency_p50_ms", "size_mb")):
        return None  # registered without figures: nothing to place
    point = {k: float(tags[f"metric.{k}"]) for k in ("accuracy", "latency_p50_ms", "size_mb")}
    note = f"champion v{version}: size, latency and accuracy as recorded when it was registered"
    if record is not None and record.get("version") == version:
        return {"key": f"champion v{version}", "this_run": True,
                "note": f"champion v{version} is this run's model: its point is the {FINAL_STAGE} stage's"}
    if record is not None and (record.get("champion") or {}).get("version") == version \
            and record["champion"].get("value") is not None and record.get("metric") == "accuracy":
        point["accuracy"] = float(record["champion"]["value"])
        note = (f"champion v{version}: accuracy {record['champion']['source']} by this run's register step; "
                "size and latency as recorded when it was registered")
    return {**point, "key": f"champion v{version}", "kind": "champion", "note": note}


def _confusion(root: Path, params: Params, reports: dict) -> list[dict]:
    labels_file = Path(root) / params.paths.validated_dir / "labels.json"
    if not reports or not labels_file.exists():
        return []
    labels = read_json(labels_file)["labels"]
    out = []
    for stage, title in (("teacher", "teacher"), (FINAL_STAGE, f"final model ({FINAL_STAGE})")):
        if stage in reports:
            path = report_path(root, params, stage)
            if "confusion_matrix" not in reports[stage]:
                raise ReportError(f"{path}: no confusion_matrix (written by an older version: rerun the stage)")
            out.append({"title": title, "labels": labels, "matrix": reports[stage]["confusion_matrix"],
                        "source": str(path)})
    return out


def _inputs(params: Params) -> str:
    """The task's inputs as the models read them: one text or a pair, and how long texts are cut."""
    d = params.data
    cols = f"text {d.text_column!r}" + (f" + text pair {d.text_pair_column!r}" if d.text_pair_column else "")
    return f"{cols}; up to {d.max_length} tokens, truncation {d.truncation}"


def _lineage(client, root: Path, params: Params, parent, record: dict | None) -> list[tuple[str, str]]:
    tags = parent.data.tags
    rows = [("MLflow parent run", f"{parent.info.run_id} (experiment {parent.info.experiment_id}, "
                                  f"{client.tracking_uri})"),
            ("Prefect flow run", tags.get("prefect_flow_run_id", "none")),
            ("inputs", _inputs(params))]
    if record is not None:
        version = client.get_model_version(params.register.model_name, record["version"])
        rows.append(("registered version", f"{params.register.model_name} v{record['version']}"))
        rows += [(k, version.tags[k]) for k in LINEAGE_KEYS if k in version.tags]
        return rows
    # Not registered by this run: what lineage would have been recorded, read now.
    here = {**git_lineage(root), **data_identity(root, params), "params_hash": tags.get("params_hash", "")}
    return rows + [("registered version", "none (the run did not reach registration)")] + [
        (k, here[k]) for k in LINEAGE_KEYS if k in here]


def gather(root: Path, params: Params, client, parent_run_id: str) -> dict:
    """Everything the page shows, for the run `parent_run_id`, from the project's files and the registry."""
    parent = client.get_run(parent_run_id)
    tags = parent.data.tags
    children = {r.data.tags.get(STAGE_TAG, r.info.run_name): r for r in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")}
    record_path = report_path(root, params, PROMOTION_REPORT)
    record = read_json(record_path) if record_path.exists() else None
    if record is not None and tags.get("registered_version") != record.get("version"):
        record = None  # an earlier run's registration
    stages, reports = _stage_rows(root, params, children, record)
    points = [{"key": s, "kind": "final" if s == FINAL_STAGE else s, **r} for s, r in reports.items()]
    champion = _champion_point(client, params, record)
    final = next((p for p in points if p["kind"] == "final"), None)
    if champion is not None and champion.get("this_run") and final is not None:
        final.update(key=f"{FINAL_STAGE} = {champion['key']}", note=champion["note"])
    elif champion is not None and not champion.get("this_run"):
        points.append(champion)
    gate, gate_source = None, ""
    if record is not None:
        gate, gate_source = record["decision"], ("the register step's decision: the evaluate stage's thresholds "
                                                 "plus the comparison with the champion")
    elif "evaluate" in children and children["evaluate"].info.status != "FAILED":
        gate = read_json(report_path(root, params, "gate"))
        gate_source = "the evaluate stage's thresholds only (the run did not reach the registry's comparison)"
    validation = None
    if "validate" in children and report_path(root, params, "validate").exists():
        validation = read_json(report_path(root, params, "validate"))
    comparisons, slices = _paired(root, params, gate)
    started = dt.datetime.fromtimestamp(parent.info.start_time / 1000, dt.timezone.utc)
    return {
        "title": f"Distillery run {parent.info.run_name}",
        "generated_at": f"run started {started.isoformat(timespec='seconds')}; report written "
                        f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; project {root}",
        "outcome": {"failure": tags.get("failure"), "registration": record,
                    "gate_passed": {"true": True, "false": False}.get(tags.get("gate_passed"))},
        "stages": stages, "points": points, "gate": gate, "gate_source": gate_source,
        "confusion": _confusion(root, params, reports), "validation": validation,
        "length_shift": tags.get("length_shift"), "lineage": _lineage(client, root, params, parent, record),
        "comparisons": comparisons, "slices": slices,
    }


def _paired(root: Path, params: Params, gate: dict | None) -> tuple[list[dict], dict]:
    """Paired comparisons (each stage vs the teacher; the final model vs the champion, overall and per
    slice) and the per-slice figures of every stage with the slices the gate failed, from this run's files."""
    path = report_path(root, params, "evaluate")
    summary = read_json(path) if path.exists() else {}
    comparisons = [{"label": f"{r['stage']} - teacher", **r["vs_teacher"]}
                   for r in summary.get("table", []) if "vs_teacher" in r]
    failed = set()
    for c in (gate or {}).get("checks", []):
        if c.get("comparison"):
            comparisons.append({"label": c["name"].replace("regression_vs_", "final - ").replace(
                "slice_vs_champion:", "final - champion, slice "), "passed": c["passed"], **c["comparison"]})
        if c["name"].startswith(("slice_accuracy:", "slice_vs_champion:")) and not c["passed"]:
            failed.add(c["name"].split(":", 1)[1])
    stages = {r["stage"]: r.get("slices", {}) for r in summary.get("table", [])}
    return comparisons, {"stages": stages, "failed": sorted(failed)}


def write_run_report(root: Path, params: Params, client, parent_run_id: str, log: bool = True) -> dict:
    """Write reports/index.html for the run and (with `log`) log it to the parent run.
    Returns where it went: `path`, and `artifact_uri` when logged."""
    from distillery.fileio import write_atomically

    html = render_report(gather(root, params, client, parent_run_id))
    path = write_atomically(report_file(root, params), lambda tmp: tmp.write_text(html, encoding="utf-8"))
    out = {"path": str(path)}
    if log:
        client.log_artifact(parent_run_id, str(path), artifact_path=ARTIFACT_DIR)
        out["artifact_uri"] = f"{client.get_run(parent_run_id).info.artifact_uri}/{ARTIFACT_DIR}/{REPORT_FILE}"
        out["runs_uri"] = f"runs:/{parent_run_id}/{ARTIFACT_DIR}/{REPORT_FILE}"
    return out


def markdown_link(where: dict) -> str:
    """The report's location, for the Prefect artifact."""
    text = f"\n## Run report\n\n`{where['path']}`"
    if "artifact_uri" in where:
        text += f" (MLflow: `{where['runs_uri']}`, stored at {where['artifact_uri']})"
    return text + "\n"

