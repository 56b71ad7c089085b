"""Task identity: a champion that predicts another label set (or takes other inputs) is another task.

The registered version records its task signature (labels in order, input columns, text pair or
not) in the `task_signature` tag. Before any training, a run whose signature differs from the
champion's stops with an error naming both; it never compares with that champion and never moves
its aliases. A deliberate replacement is `distillery run --new-task --reason "..."`, recorded in
the champion history. Also checked here, before training: that every `gate.slices` entry selects
eval rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from distillery.config import Params
from distillery.errors import DistilleryError

SIGNATURE_TAG = "task_signature"


class TaskMismatch(DistilleryError, RuntimeError):
    """The run's task is not the champion's; the message says what differs and what to do."""


def run_signature(root: Path, params: Params) -> dict:
    """The task this run trains for, from the validated data and the model's input columns."""
    labels = json.loads((Path(root) / params.paths.validated_dir / "labels.json").read_text())["labels"]
    # The served model's input columns (distillery.json `input_columns`): one text, or a pair.
    columns = ["text", "text_pair"] if params.data.text_pair_column else ["text"]
    return {"labels": [str(x) for x in labels], "input_columns": columns, "text_pair": len(columns) == 2}


def champion_signature(name: str, version) -> dict | None:
    """The recorded signature; for a version registered before it was recorded, its labels read from the
    logged model's output signature (`prob_<label>` columns), one text input. None when unknown."""
    raw = version.tags.get(SIGNATURE_TAG)
    if raw:
        return json.loads(raw)
    try:
        import mlflow

        outputs = mlflow.models.get_model_info(f"models:/{name}/{version.version}").signature.outputs.input_names()
    except Exception:
        return None
    labels = [str(c)[len("prob_"):] for c in outputs if str(c).startswith("prob_")]
    return {"labels": labels, "input_columns": ["text"], "text_pair": False} if labels else None


def differences(mine: dict, theirs: dict) -> list[str]:
    out = []
    if mine["labels"] != theirs["labels"]:
        out.append(f"labels {mine['labels']} (this run) vs {theirs['labels']} (champion)")
    if list(mine["input_columns"]) != list(theirs.get("input_columns", ["text"])) or \
            bool(mine["text_pair"]) != bool(theirs.get("text_pair", False)):
        out.append(f"inputs {mine['input_columns']} (this run) vs {theirs.get('input_columns', ['text'])} (champion)")
    return out


def check_task_identity(root: Path, params: Params, client, new_task_reason: str | None) -> dict:
    """{"signature", "champion", "new_task"}; raises TaskMismatch when the champion's task differs
    and no `--new-task --reason` was given."""
    from mlflow.exceptions import MlflowException

    name = params.register.model_name
    mine = run_signature(root, params)
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champ = None
    theirs = champion_signature(name, champ) if champ is not None else None
    diff = differences(mine, theirs) if theirs is not None else []
    if diff and not new_task_reason:
        raise TaskMismatch(
            f"register.model_name {name!r}: this run's task differs from champion v{champ.version}'s: "
            f"{'; '.join(diff)}. A model of another task is not comparable and must not take its aliases: "
            "set a new register.model_name for this task, or, to replace the champion deliberately, run "
            "`distillery run --new-task --reason \"...\"` (recorded in the champion history).")
    return {"signature": mine, "champion": None if champ is None else str(champ.version),
            "champion_signature": theirs, "new_task": bool(diff)}


def check_suite(root: Path, params: Params) -> int:
    """The must-pass suite file reads and uses only the task's labels: its number of entries."""
    from distillery.suite import load_suite

    labels = json.loads((Path(root) / params.paths.validated_dir / "labels.json").read_text())["labels"]
    return len(load_suite(Path(root) / params.gate.suite, labels))


def check_slices(root: Path, params: Params) -> dict[str, int]:
    """Every slice selects eval rows (tokens counted with the teacher's tokenizer): {slice: rows}."""
    if not params.gate.slices:
        return {}
    from distillery.data import load_split
    from distillery.model_source import resolve_model_source
    from distillery.slices import all_slice_rows

    vdir = Path(root) / params.paths.validated_dir
    eval_set = load_split(vdir / "eval.parquet")
    labels = json.loads((vdir / "labels.json").read_text())["labels"]
    source = resolve_model_source(params.teacher.model, Path(root))[0]
    rows = all_slice_rows(list(params.gate.slices), labels, eval_set.labels, list(eval_set.texts),
                          tokenizer_source=source, eval_path=Path(root) / params.data.eval_path)
    return {k: len(v) for k, v in rows.items()}
