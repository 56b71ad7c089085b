"""Nothing bad gets through, nothing is lost.

One project (a random-init tiny BERT, ~90 rows of user data under `incoming/`) serves the
whole module, in order:

1. A real `distillery run` process is SIGKILLed during the distill stage; the next run
   completes, reusing validate, teacher and soft_targets, and registers the champion.
2. A corpus of bad inputs, generated here: each goes through the real entry point
   (`distillery_cli.cli.main(["run"])`, in-process; one case as a real process) and must stop at
   the right place with one message naming the file, column, key or rows, while nothing is
   trained or registered, the champion stays, and the earlier outputs stay as they were.
3. The good data again: nothing is retrained, the registry is unchanged.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from distillery.env import configure_environment
from tests.helpers import make_project, tiny_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NAME = "distillery-student"
TRAIN, EVAL = "incoming/train.csv", "incoming/eval.csv"
# Enough distill epochs on the tiny model (~0.2 s each here) that a kill lands inside training.
DISTILL_EPOCHS = 40
DISTILL_MARKER = "distill: student of"  # printed when the student is built, before training
LATER = ("teacher", "teacher_folds", "soft_targets", "distill", "prune", "quantize", "evaluate", "register")


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    from distillery.demo_data import make_demo_dataset

    params = tiny_params(data={"train_path": TRAIN, "eval_path": EVAL}, distill={"epochs": DISTILL_EPOCHS})
    train, eval_ = make_demo_dataset(params["data"]["demo_rows"], params["base"]["seed"])
    root = make_project(tmp_path_factory.mktemp("bad_inputs"), params, list(train.text) + list(eval_.text))
    (root / "incoming").mkdir()
    train.to_csv(root / TRAIN, index=False)
    eval_.to_csv(root / EVAL, index=False)
    configure_environment(root)
    return root


# --------------------------------------------------------------------------- helpers


def client(root: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def pipeline_runs(root: Path) -> list:
    c = client(root)
    exp = c.get_experiment_by_name("distillery")
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName LIKE 'pipeline-%'",
                         order_by=["attributes.start_time DESC"])


def nested_runs(root: Path, parent_id: str) -> dict:
    c = client(root)
    runs = c.search_runs([c.get_run(parent_id).info.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def registry(root: Path) -> dict:
    from tasks.promotion import history
    from tasks.register import aliases_by_version

    c = client(root)
    return {"aliases": aliases_by_version(c, NAME), "history": history(c, NAME),
            "versions": sorted(str(v.version) for v in c.search_model_versions(f"name='{NAME}'"))}


def digest(root: Path, *paths: str) -> dict[str, str]:
    """md5 of every file under the given paths: what "intact" means below."""
    out = {}
    for rel in paths:
        for p in sorted([root / rel] if (root / rel).is_file() else (root / rel).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    """Temp files and folders of interrupted writes, anywhere in the stage outputs."""
    return [str(p.relative_to(root)) for d in ("data", "models", "reports") for p in (root / d).rglob(".*")
            if ".tmp" in p.name or ".old-" in p.name]


def process_env() -> dict:
    from prefect.settings import PREFECT_API_URL

    # The session's Prefect test server: a run process then starts no server of its own.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
            "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


def start_run(root: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "distillery"), "--project-dir", str(root), "run"], env=process_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """Lines of the process's output up to the one holding `marker` (fails if it ends first)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] and lines.put(None),
                     daemon=True).start()
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    pytest.fail(f"{marker!r} not seen in {timeout:.0f} s; output:\n{''.join(seen)[-3000:]}")


def kill_process_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (the run, DVC's stage process); then, by pid, any
    descendant that left the group."""
    import psutil

    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(descendants, timeout=30)


# --------------------------------------------------------------------------- 1. interruption


def test_run_killed_during_distill_resumes_without_redoing_finished_stages(project):
    from dvc.repo import Repo

    run = start_run(project, start_new_session=True)  # its own process group, killed below by pid
    try:
        read_until(run, DISTILL_MARKER, timeout=600)
        time.sleep(1.0)  # well inside the training loop
    finally:
        kill_process_tree(run)
    assert run.returncode == -signal.SIGKILL

    # What the killed run left: validate, teacher(_folds), soft_targets finished and recorded, distill nothing.
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"demo_data", "validate", "teacher", "teacher_folds", "soft_targets"}
    assert not (project / "models/student").exists() and not (project / "reports/distill.json").exists()
    finished = digest(project, "data/validated", "models/teacher", "data/teacher_logits")
    mtimes = {p: (project / p).stat().st_mtime_ns for p in finished}
    [killed] = pipeline_runs(project)
    assert killed.info.status == "RUNNING"

    rerun = subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), "run"], env=process_env(),
                           capture_output=True, text=True, timeout=900)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert f"run {killed.info.run_id} of an interrupted pipeline run marked KILLED" in out
    assert "Traceback" not in out

    # The finished stages were reused, byte for byte and untouched; the rest ran and registered.
    assert digest(project, "data/validated", "models/teacher", "data/teacher_logits") == finished
    assert {p: (project / p).stat().st_mtime_ns for p in finished} == mtimes
    latest, closed = pipeline_runs(project)
    assert latest.info.status == "FINISHED"
    stages = nested_runs(project, latest.info.run_id)
    assert {s: stages[s].data.tags["dvc_skipped"] for s in ("validate", "teacher", "soft_targets", "distill")} == {
        "validate": "true", "teacher": "true", "soft_targets": "true", "distill": "false"}
    assert registry(project)["versions"] == ["1"] and registry(project)["aliases"]["1"] == {"challenger", "champion"}
    # Nothing half-done is left or accepted: the killed run is closed, DVC's record is complete.
    assert closed.info.run_id == killed.info.run_id and closed.info.status == "KILLED"
    assert "interrupted" in closed.data.tags["failure"]
    assert leftovers(project) == []
    with Repo(str(project)) as repo:
        assert repo.status() == {}
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        state = c.read_flow_run(UUID(killed.data.tags["prefect_flow_run_id"])).state
    assert state.type.value == "CRASHED" and "interrupted" in state.message


# --------------------------------------------------------------------------- 2. the corpus


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list[str]]  # changes the inputs; returns extra `distillery run` arguments
    needles: list[str]                  # what the one error message must name
    stops_at: str                       # "params" (before anything), "validate" or "teacher"
    changes: list[str] = field(default_factory=list)  # outputs this case legitimately rewrites


def lines_of(root: Path, rel: str = TRAIN) -> list[str]:
    return (root / rel).read_text().splitlines()


def write_lines(root: Path, lines: list[str], rel: str = TRAIN) -> list[str]:
    (root / rel).write_text("\n".join(lines) + "\n")
    return []


def set_cells(root: Path, rows: dict[int, tuple[str | None, str | None]]) -> list[str]:
    """Data row n (1-based, after the header) gets (text, label); None keeps a cell."""
    import csv
    import io

    lines = lines_of(root)
    for n, (text, label) in rows.items():
        old_text, old_label = next(csv.reader([lines[n]]))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow([old_text if text is None else text,
                                                     old_label if label is None else label])
        lines[n] = buf.getvalue()
    return write_lines(root, lines)


def edit_params(root: Path, edit: Callable[[dict], None]) -> list[str]:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    edit(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return []


def truncated_parquet(root: Path) -> list[str]:
    import pandas as pd

    path = root / "incoming/train.parquet"
    pd.read_csv(root / TRAIN).to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["--set", "data.train_path=incoming/train.parquet"]


def directory(root: Path) -> list[str]:
    (root / "incoming/folder.csv").mkdir()
    return ["--set", "data.train_path=incoming/folder.csv"]


def valid_new_data(root: Path) -> list[str]:
    return write_lines(root, lines_of(root)[:-1])  # one row fewer: new, valid data


def latin1_byte_in_row_10(root: Path) -> list[str]:
    lines = (root / TRAIN).read_bytes().split(b"\n")
    lines[10] = lines[10].replace(b",", b" caf\xe9,", 1)  # "café" saved as Latin-1, on line 11
    (root / TRAIN).write_bytes(b"\n".join(lines))
    return []


def longer_texts(root: Path) -> list[str]:
    import pandas as pd

    for rel in (TRAIN, EVAL):
        df = pd.read_csv(root / rel)
        df["text"] = (df["text"] + " ") * 6
        df.to_csv(root / rel, index=False)
    return []


# The gate's own inputs are checked right after validation; validation itself may re-run first, on
# inputs restored after an earlier case that changed them: its outputs may change, nothing after it.
REVALIDATED = ["data/validated", "dvc.lock"]


def suite_file(text: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        (root / "incoming/suite.yaml").write_text(text)
        return ["--set", "gate.suite=incoming/suite.yaml"]

    return setup


def renamed_label(root: Path) -> list[str]:
    """Another task: the same texts, a label set the champion does not predict."""
    for rel in (TRAIN, EVAL):
        write_lines(root, [line.replace(",negative", ",bad") for line in lines_of(root, rel)], rel)
    return ["--set", "data.labels=[bad, neutral, positive]"]


CASES = [
    Case("empty_file", lambda r: write_lines(r, []), [TRAIN, "file is empty"], "validate"),
    Case("header_only", lambda r: write_lines(r, ["text,label"]), [TRAIN, "no data rows (header only)"], "validate"),
    Case("missing_text_column", lambda r: write_lines(r, ["body,label"] + lines_of(r)[1:]),
         [TRAIN, "text column 'text' not found", "columns found: ['body', 'label']"], "validate"),
    Case("missing_label_column", lambda r: write_lines(r, ["text,sentiment"] + lines_of(r)[1:]),
         [TRAIN, "label column 'label' not found", "columns found: ['text', 'sentiment']"], "validate"),
    Case("null_and_empty_texts", lambda r: set_cells(r, {3: ("", None), 7: ("   ", None)}),
         [f"{TRAIN} (split 'train', 72 rows)", "text not null [column 'text']: 1 of 72 rows", "row 3:",
          "text not empty or whitespace-only [column 'text']: 1 of 72 rows", "row 7: label='neutral' text='   '"],
         "validate"),
    Case("labels_outside_declared_set", lambda r: set_cells(r, {5: (None, "meh"), 9: (None, "meh")}),
         [TRAIN, "labels in declared set [column 'label']: 2 of 72 rows", "'meh' (2x)", "row 5:", "row 9:"],
         "validate"),
    Case("nan_labels", lambda r: set_cells(r, {2: (None, "NaN"), 4: (None, "nan"), 6: (None, "")}),
         [TRAIN, "label not null [column 'label']: 3 of 72 rows", "row 2:", "row 4:", "row 6:"], "validate"),
    Case("single_class", lambda r: write_lines(r, [lines_of(r)[0]] + [
             line.rsplit(",", 1)[0] + ",positive" for line in lines_of(r)[1:]]),
         [TRAIN, "every class present [column 'label']: no rows of class(es) ['negative', 'neutral']",
          "class 'positive' holds 72 of 72 labelled rows"], "validate"),
    Case("non_utf8_bytes", latin1_byte_in_row_10, [TRAIN, "not UTF-8 text (invalid byte 0xe9", "line 11"], "validate"),
    Case("one_megabyte_text", lambda r: set_cells(r, {4: ("x" * 1_000_000, None)}),
         [TRAIN, "text length within bounds [column 'text']: 1 of 72 rows outside 1..5000 characters",
          "row 4: label="], "validate"),
    Case("wrong_delimiter", lambda r: write_lines(r, [line.replace(",", ";") for line in lines_of(r)]),
         [TRAIN, "text column 'text' not found", "the header contains semicolons"], "validate"),
    Case("directory_instead_of_file", directory,
         ["params.yaml: data.train_path: incoming/folder.csv is a directory"], "params"),
    Case("truncated_parquet", truncated_parquet,
         ["incoming/train.parquet", "not a readable Parquet file (truncated or corrupt?)"], "validate"),
    Case("train_eval_leakage", lambda r: write_lines(r, lines_of(r, EVAL) + lines_of(r)[1:4], EVAL),
         [EVAL, "no train/eval leakage [column 'text']: 3 of 21 rows (14.3%) have a text that is also in train"],
         "validate"),
    Case("length_shift_against_champion", longer_texts,
         ["text length shift", "against champion version 1", "train: PSI"], "validate",
         changes=["data/validated", "dvc.lock"]),  # the suite passed: validate's outputs are the new data's
    Case("changed_between_validation_and_training", valid_new_data,
         ["stage 'teacher' not started", f"{TRAIN}: changed since it was validated"], "teacher",
         changes=["data/validated", "dvc.lock"]),
    Case("params_unknown_key", lambda r: edit_params(r, lambda p: p["distill"].update(temprature=2.0)),
         ["params.yaml: distill.temprature: unknown key"], "params"),
    Case("params_wrong_type", lambda r: edit_params(r, lambda p: p["distill"].update(epochs="three")),
         ["params.yaml: distill.epochs: Input should be a valid integer", "'three'"], "params"),
    Case("params_out_of_range", lambda r: edit_params(r, lambda p: p["validate"]["suite"].update(max_leakage_share=2)),
         ["params.yaml: validate.suite.max_leakage_share: Input should be less than or equal to 1"], "params"),
    Case("gate_slice_selects_no_rows", lambda r: edit_params(r, lambda p: p["gate"].update(
             slices=[{"name": "short", "tokens": [0, 64]}, {"name": "huge", "tokens": [5000, None]}])),
         ["not started: gate.slices[1] ('huge'): selects no eval rows"], "validate", changes=REVALIDATED),
    Case("gate_suite_unknown_label", suite_file("examples:\n  - {id: a, text: fine, label: neutral}\n"
                                                "  - {id: b, text: so mad, label: angry}\n"),
         ["incoming/suite.yaml: examples[1] ('b'): unknown label 'angry'; the task's labels are"], "validate",
         changes=REVALIDATED),
    Case("gate_suite_bad_row", suite_file("invariance:\n  - {id: swap, texts: [just one text]}\n"),
         ["incoming/suite.yaml: invariance[0] ('swap'): `texts` must be a list of at least two"], "validate",
         changes=REVALIDATED),
    Case("gate_confidence_out_of_range", lambda r: ["--set", "gate.confidence=1.5"],
         ["params.yaml: gate.confidence: Input should be less than 1"], "params"),
    Case("task_differs_from_champion", renamed_label,
         ["this run's task differs from champion v1's",
          "labels ['bad', 'neutral', 'positive'] (this run) vs ['negative', 'neutral', 'positive'] (champion)",
          "set a new register.model_name", "--new-task --reason"], "validate",
         changes=["data/validated", "dvc.lock"]),
    Case("params_yaml_syntax_error", lambda r: (r / "params.yaml").write_text(
             (r / "params.yaml").read_text() + "gate: {min_accuracy: [0.5\n") and [],
         ["params.yaml: YAML syntax error", "line"], "params"),
]
INTACT = ["models", "data/teacher_logits", "data/validated", "dvc.lock"] + [
    f"reports/{s}.json" for s in ("teacher", "soft_targets", "distill", "prune", "quantize", "evaluate", "gate")]


@pytest.fixture
def inputs_restored(project):
    """Each case starts from the good inputs and params, and leaves them so."""
    saved = {p: (project / p).read_bytes() for p in (TRAIN, EVAL, "params.yaml")}
    yield
    for p in project.joinpath("incoming").iterdir():
        p.chmod(0o644) if p.is_file() else None
        if str(p.relative_to(project)) not in saved:
            p.rmdir() if p.is_dir() else p.unlink()
    for p, data in saved.items():
        (project / p).write_bytes(data)


def ensure_champion(root: Path) -> None:
    """The corpus needs a champion; test 1 makes it (this runs the flow only if that test failed)."""
    if not registry(root)["aliases"]:
        from distillery_cli.cli import main

        assert main(["--project-dir", str(root), "run"]) == 0


def run_main(root: Path, args: list[str]) -> tuple[int, str]:
    """`distillery run` in this process; its output, read from buffers that are never closed
    (Prefect's console handler may keep whichever stream it finds; pytest's capfd closes its own)."""
    import contextlib
    import io

    from distillery_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--project-dir", str(root), "run", *args])
    sys.stderr.write(err.getvalue()[-5000:])  # shown by pytest when the test fails
    return rc, out.getvalue() + err.getvalue()


def error_message(output: str) -> str:
    """The one `distillery: error:` message, to the end of its lines."""
    assert output.count("distillery: error:") == 1, output[-3000:]
    message = output[output.index("distillery: error:"):]
    return "\n".join(line for line in message.splitlines() if not line[:2].isdigit())  # minus later log lines


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_stops_at_the_right_place_and_loses_nothing(project, inputs_restored, case, monkeypatch):
    ensure_champion(project)
    before = {"files": digest(project, *INTACT), "registry": registry(project), "runs": len(pipeline_runs(project))}
    args = case.setup(project)
    if case.id == "changed_between_validation_and_training":
        import flows.pipeline

        real = flows.pipeline.run_dvc_stage

        def then_change_the_data(root, stage):
            ran = real(root, stage)
            if stage == "validate":  # validated, and now the file changes before training
                (root / TRAIN).write_text((root / TRAIN).read_text() + "a row that arrived late,positive\n")
            return ran

        monkeypatch.setattr(flows.pipeline, "run_dvc_stage", then_change_the_data)
    rc, output = run_main(project, args)

    message = error_message(output)
    assert rc == (2 if case.stops_at == "params" else 1), output[-3000:]
    for needle in case.needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert "Traceback" not in output and len(message) < 3000
    assert digest(project, *(p for p in INTACT if p not in case.changes)) == {
        k: v for k, v in before["files"].items() if not any(k == c or k.startswith(c + "/") for c in case.changes)}
    assert registry(project) == before["registry"]  # nothing registered, the champion did not move

    runs = pipeline_runs(project)
    if case.stops_at == "params":
        assert len(runs) == before["runs"]  # stopped before anything started
        return
    assert len(runs) == before["runs"] + 1
    assert runs[0].info.status == "FAILED" and case.needles[-1] in runs[0].data.tags["failure"]
    stages = nested_runs(project, runs[0].info.run_id)
    assert stages[case.stops_at].info.status == "FAILED"
    assert not set(stages) & set(LATER[LATER.index(case.stops_at) + 1 if case.stops_at in LATER else 0:])
    if case.stops_at == "validate" and not case.id.startswith(("gate_", "task_")):  # the data passed these
        # The summary, shown in Prefect too: which check, which file.
        summary = validation_artifact(runs[0].data.tags["prefect_flow_run_id"])
        named = ("**Text length vs the champion's data: failed**" if case.id == "length_shift_against_champion"
                 else f"`{case.needles[0].split(' ')[0]}`")  # the file
        assert summary.startswith("# Data validation: FAILED") and named in summary, summary


def validation_artifact(flow_run_id: str) -> str:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        [art] = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]),
            key=ArtifactFilterKey(any_=["distillery-validation"])))
    return art.data


def test_unreadable_file_stops_before_anything_as_a_real_process(project, inputs_restored):
    """chmod 000. Root reads any file through its DAC-override capabilities, so as root the run
    process is started without them (dropped from its capability bounding set): for it, as for
    any other user, the file cannot be opened."""
    ensure_champion(project)
    before = {"files": digest(project, *INTACT), "registry": registry(project), "runs": len(pipeline_runs(project))}
    (project / TRAIN).chmod(0o000)

    def drop_read_override():  # CAP_DAC_OVERRIDE = 1, CAP_DAC_READ_SEARCH = 2; PR_CAPBSET_DROP = 24
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    as_root = os.geteuid() == 0
    try:
        run = subprocess.run([str(BIN / "distillery"), "--project-dir", str(project), "run"], env=process_env(),
                             capture_output=True, text=True, timeout=300,
                             preexec_fn=drop_read_override if as_root else None)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop root's read-override capabilities here: {exc}")
    message = error_message(run.stdout + run.stderr)
    assert run.returncode == 2
    assert f"params.yaml: data.train_path: cannot read {TRAIN}: permission denied" in message
    assert digest(project, *INTACT) == before["files"] and registry(project) == before["registry"]
    assert len(pipeline_runs(project)) == before["runs"]


# --------------------------------------------------------------------------- 3. afterwards


def test_good_data_again_retrains_nothing(project):
    ensure_champion(project)
    before = {"files": digest(project, "models", "data/teacher_logits"), "registry": registry(project)}
    rc, output = run_main(project, [])
    assert rc == 0, output[-3000:]
    latest = pipeline_runs(project)[0]
    stages = nested_runs(project, latest.info.run_id)
    assert all(stages[s].data.tags["dvc_skipped"] == "true" for s in ("teacher", "soft_targets", "distill", "prune",
                                                                       "quantize"))
    assert digest(project, "models", "data/teacher_logits") == before["files"]
    assert registry(project) == before["registry"]
    assert leftovers(project) == []
