"""The defensible gate, end to end (real DVC, Prefect, MLflow; a random-init tiny BERT).

Two models of the same quality by construction, trained on learnable cue data (see
`make_cue_dataset`) with one class's labels merged into `neutral`:
- A never predicts `positive` (its positives are labelled neutral),
- B never predicts `negative`.
The eval rows hold 30 negatives, 26 positives and 64 neutrals, so B is about 4 rows (0.033)
worse than A overall: a difference well inside its paired interval. The module's project goes
through these runs in order (`STEPS`; each test reaches the run it checks, so it also runs alone):

1. A is registered (first champion).
2. B, under the strict point rule (max_regression 0): refused, the record says the point rule decided.
3. B' (B quantized per tensor: a new model file, the same behaviour), under non-inferiority with a
   0.25 margin: promoted; the record carries the interval and says non-inferiority decided.
4. A' (A quantized per tensor) against champion B': better on average, but on the `positives`
   slice it gets nothing right where B' gets them all: it stays challenger, the slice named.
5. The same rows with `negative` renamed `bad` (another task under the same register.model_name):
   refused before training; with `distillery run --new-task --reason ...` it trains, takes the
   champion alias without being compared with the old champion, and the reason is in the history.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pandas as pd
import pytest

from distillery.env import configure_environment
from tests.helpers import Story, cue_text, make_project, tiny_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NAME = "distillery-student"
COUNTS = {"negative": 30, "positive": 26, "neutral": 64}
COMMON = ["teacher.epochs=20", "teacher.learning_rate=0.003", "distill.epochs=3",
          "validate.length_shift.fail_psi=null", "gate.bootstrap_resamples=2000"]


def cue_rows(counts: dict[str, int], rng: random.Random, seen: set) -> pd.DataFrame:
    rows = [(cue_text(label, rng, seen), label) for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"]).sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    rng, seen = random.Random(1), set()
    evals = cue_rows(COUNTS, rng, seen)
    train = cue_rows({"negative": 40, "positive": 40, "neutral": 40}, rng, seen)
    root = tmp_path_factory.mktemp("gate_e2e")
    # Each model still sees all three labels (validation wants every class in train): one row keeps it.
    blind_pos = train.assign(label=train.label.replace({"positive": "neutral"}))
    blind_pos.loc[blind_pos.index[0], "label"] = "positive"
    blind_neg = train.assign(label=train.label.replace({"negative": "neutral"}))
    blind_neg.loc[blind_neg.index[0], "label"] = "negative"
    params = tiny_params(data={"train_path": "a_train.csv", "eval_path": "eval.csv"},
                         validate={"suite": {**tiny_params()["validate"]["suite"], "max_class_share": 0.95,
                                             "min_class_rows": 1}})
    root = make_project(root, params, [*train.text, *evals.text])
    blind_pos.to_csv(root / "a_train.csv", index=False)
    blind_neg.to_csv(root / "b_train.csv", index=False)
    evals.to_csv(root / "eval.csv", index=False)
    configure_environment(root)
    return root


def run_flow(root: Path, overrides: list[str]) -> dict:
    from distillery_cli.cli import prepare_params
    from flows.pipeline import pipeline

    prepare_params(root, None, COMMON + overrides)
    return pipeline(project_dir=str(root))


def checks(decision: dict) -> dict[str, dict]:
    return {c["name"]: c for c in decision["checks"]}


def aliases(root: Path) -> dict[str, set]:
    from mlflow import MlflowClient

    from tasks.register import aliases_by_version

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return aliases_by_version(MlflowClient(tracking_uri=uri, registry_uri=uri), NAME)


STEPS = {
    "a_first": lambda root: run_flow(root, []),
    "b_point_rule": lambda root: run_flow(root, ["data.train_path=b_train.csv", "gate.champion_rule=point",
                                                 "gate.max_regression=0.0"]),
    "b_non_inferiority": lambda root: run_flow(root, ["data.train_path=b_train.csv", "quantize.per_channel=false",
                                                      "gate.champion_rule=non_inferiority",
                                                      "gate.max_regression=0.25"]),
    "a_worse_on_a_slice": lambda root: run_flow(root, [
        "data.train_path=a_train.csv", "quantize.per_channel=false", "gate.max_regression=0.25",
        "gate.max_slice_regression=0.1",
        "gate.slices=[{name: positives, label: [positive]}, {name: neutrals, label: [neutral]}]"]),
}


@pytest.fixture(scope="module")
def story(project):
    return Story(project, STEPS)


def test_first_model_becomes_champion(story):
    reg = story.reach("a_first")["registration"]
    assert reg["version"] == "1" and reg["promoted"] is True
    assert reg["task"]["signature"] == {"labels": ["negative", "neutral", "positive"], "input_columns": ["text"],
                                        "text_pair": False}


def test_equivalent_challenger_is_refused_by_the_strict_point_rule(project, story):
    reg = story.reach("b_point_rule")["registration"]
    check = checks(reg["decision"])["regression_vs_champion"]
    comp = check["comparison"]
    assert reg["version"] == "2" and reg["promoted"] is False and check["rule"] == "point"
    # B is a few rows worse: the point rule refuses what the interval cannot tell from zero.
    assert -0.1 < comp["difference"] < 0 and comp["ci_low"] < 0 < comp["ci_high"]
    assert comp["mcnemar"]["p_value"] > 0.05 and comp["mcnemar"]["only_baseline"] >= 20
    assert "point rule: regression" in check["reason"] and check["reason"].endswith("FAILED")
    assert aliases(project)["1"] == {"champion"}


def test_equivalent_challenger_is_promoted_under_non_inferiority(project, story):
    reg = story.reach("b_non_inferiority")["registration"]
    check = checks(reg["decision"])["regression_vs_champion"]
    comp = check["comparison"]
    assert reg["version"] == "3" and reg["promoted"] is True, reg["reason"]
    assert check["rule"] == "non_inferiority" and comp["difference"] < 0 and -0.25 < comp["ci_low"] < 0
    assert comp["confidence"] == 0.95 and comp["resamples"] == 2000 and comp["n"] == sum(COUNTS.values())
    assert "non-inferiority rule: CI lower bound" in check["reason"] and check["reason"].endswith("ok")
    assert aliases(project)["3"] == {"challenger", "champion"}


def test_better_on_average_but_worse_on_a_slice_stays_challenger_with_the_slice_named(project, story):
    result = story.reach("a_worse_on_a_slice")
    reg = result["registration"]
    by_name = checks(reg["decision"])
    overall, slice_check = by_name["regression_vs_champion"], by_name["slice_vs_champion:positives"]
    assert reg["version"] == "4" and reg["promoted"] is False
    assert overall["passed"] and overall["comparison"]["difference"] > 0  # better on average
    assert not slice_check["passed"] and slice_check["comparison"]["difference"] < -0.5
    assert by_name["slice_vs_champion:neutrals"]["passed"]  # both right on every neutral row: [0, 0]
    assert "slice_vs_champion:positives" in reg["reason"] and "on slice 'positives'" in reg["reason"]
    assert aliases(project)["3"] == {"champion"} and aliases(project)["4"] == {"challenger"}
    # The slice figures of every stage, and the page marks the failing slice.
    summary = json.loads((project / "reports/evaluate.json").read_text())
    final = next(r for r in summary["table"] if r["stage"] == "quantize")
    assert final["slices"]["positives"]["rows"] == COUNTS["positive"]
    html = (project / "reports/index.html").read_text()
    assert 'id="slices"' in html and 'id="plot-differences"' in html and "positives" in html


def test_another_task_replaces_the_champion_only_with_new_task_and_its_reason(project, capsys):
    from mlflow import MlflowClient

    from distillery_cli.cli import main
    from tasks.promotion import HISTORY_TAG, STACK_TAG

    for src, dest in (("a_train.csv", "c_train.csv"), ("eval.csv", "c_eval.csv")):
        frame = pd.read_csv(project / src)
        frame.assign(label=frame.label.replace({"negative": "bad"})).to_csv(project / dest, index=False)
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = str(client.get_model_version_by_alias(NAME, "champion").version)
    versions = lambda: sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    models = lambda: {str(p): p.stat().st_mtime_ns for p in (project / "models").rglob("*") if p.is_file()}
    before, trained = versions(), models()
    args = ["--project-dir", str(project), "run", "--set", "data.train_path=c_train.csv",
            "--set", "data.eval_path=c_eval.csv", "--set", "data.labels=[bad, neutral, positive]",
            "--set", "gate.slices=[]", "--set", "gate.max_slice_regression=null"]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"this run's task differs from champion v{old}'s" in err
    assert "labels ['bad', 'neutral', 'positive'] (this run) vs ['negative', 'neutral', 'positive'] (champion)" in err
    assert "--new-task --reason" in err
    # Stopped before training: nothing trained, nothing registered, the champion where it was.
    assert models() == trained
    assert versions() == before and str(client.get_model_version_by_alias(NAME, "champion").version) == old

    reason = "labels renamed: negative is now bad for the support team"
    assert main(args + ["--new-task", "--reason", reason]) == 0, capsys.readouterr().err[-3000:]
    new = str(max(versions()))
    assert versions() == before + [int(new)]
    mv = client.get_model_version(NAME, new)
    assert set(mv.aliases) == {"champion", "challenger"}
    assert json.loads(mv.tags["task_signature"])["labels"] == ["bad", "neutral", "positive"]
    # Not compared with the old champion (another task): the check says so, with the reason.
    check = checks(json.loads(mv.tags["gate_decision"]))["regression_vs_champion"]
    assert check["skipped"] and f"champion v{old} is of another task" in check["reason"] and reason in check["reason"]
    model = client.get_registered_model(NAME)
    last = json.loads(model.tags[HISTORY_TAG])[-1]
    assert last["kind"] == "new_task" and last["version"] == new and last["from"] == old
    assert reason in last["reason"] and f"replaces champion v{old}" in last["reason"]
    assert "labels ['bad', 'neutral', 'positive'] (this run) vs ['negative', 'neutral', 'positive']" in last["reason"]
    assert json.loads(model.tags[STACK_TAG])[-2:] == [old, new]
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert promotion["version"] == new and promotion["promoted"] is True
