"""Paired statistics, the non-inferiority champion rule, slices and task identity, on hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from distillery.config import ConfigError, GateConfig, SliceConfig, params_from_dict
from distillery.gate import CHAMPION_CHECK, champion_check, slice_accuracy_checks, slice_champion_checks
from distillery.slices import SliceError, all_slice_rows, select_rows, slice_figures
from distillery.stats import mcnemar_exact, metric_value, paired_comparison
from tasks.task_identity import differences
from tests.helpers import tiny_params


def test_mcnemar_exact_matches_the_binomial_textbook_value():
    # Discordant pairs b=1, c=5: p = 2 * P(X <= 1 | n=6, 1/2) = 2 * (1 + 6) / 64 = 0.21875.
    assert mcnemar_exact(10, 1, 5, 3).p_value == pytest.approx(0.21875)
    # Agresti (2002) 10.1: b=150, c=86, exact p = 2 * P(X <= 86 | n=236, 1/2) ~ 3.7e-5.
    from scipy.stats import binom
    assert mcnemar_exact(794, 150, 86, 570).p_value == pytest.approx(2 * binom.cdf(86, 236, 0.5))
    assert mcnemar_exact(5, 0, 0, 5).p_value == 1.0  # no discordant pair: no evidence of a difference


def test_identical_predictions_give_a_zero_width_interval():
    gold = np.array([0, 1, 2, 1, 0, 2, 1, 1])
    pred = np.array([0, 1, 1, 1, 0, 2, 0, 1])
    c = paired_comparison(pred, pred, gold, n_classes=3, resamples=200, seed=1)
    assert (c.difference, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)
    assert c.mcnemar.p_value == 1.0 and c.n == 8


def test_bootstrap_interval_covers_a_known_shift_and_is_seeded():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 2000)
    base = np.where(rng.random(2000) < 0.70, gold, 1 - gold)
    # The candidate fixes exactly 200 of the baseline's errors: true difference +0.10.
    wrong = np.flatnonzero(base != gold)[:200]
    cand = base.copy()
    cand[wrong] = gold[wrong]
    c = paired_comparison(cand, base, gold, confidence=0.95, resamples=1000, seed=3)
    assert c.difference == pytest.approx(0.10)
    assert c.ci_low < 0.10 < c.ci_high and c.ci_low > 0.08  # paired: only the 200 discordant rows vary
    assert (c.mcnemar.only_candidate, c.mcnemar.only_baseline) == (200, 0) and c.mcnemar.p_value < 1e-10
    again = paired_comparison(cand, base, gold, confidence=0.95, resamples=1000, seed=3)
    assert (again.ci_low, again.ci_high) == (c.ci_low, c.ci_high)
    f1 = paired_comparison(cand, base, gold, metric="macro_f1", resamples=200, seed=3)
    assert f1.difference == pytest.approx(metric_value(cand, gold, "macro_f1", 2) - metric_value(base, gold, "macro_f1", 2))
    assert f1.ci_low <= f1.difference <= f1.ci_high


def test_paired_comparison_rejects_bad_input():
    with pytest.raises(ValueError, match="same rows"):
        paired_comparison([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        paired_comparison([0], [0], [0], confidence=1.0)


def _equivalent_but_slightly_worse():
    # 400 rows, candidate 2 rows worse than the champion: -0.005, well inside a 0.05 margin.
    gold = np.zeros(400, dtype=int)
    champ = np.zeros(400, dtype=int)
    champ[:40] = 1
    cand = champ.copy()
    cand[40:50] = 1   # 10 rows it gets wrong that the champion gets right
    cand[:8] = 0      # 8 rows it fixes
    return paired_comparison(cand, champ, gold, resamples=1000, seed=0)


def test_non_inferiority_promotes_an_equivalent_model_the_strict_point_rule_refuses():
    c = _equivalent_but_slightly_worse()
    assert c.difference == pytest.approx(-0.005) and c.ci_low < -0.005
    ni = champion_check("accuracy", c.candidate, c.baseline, 0.05, "3", "re-scored", c, "non_inferiority")
    assert ni.passed and ni.rule == "non_inferiority" and ni.observed == pytest.approx(-c.ci_low)
    assert "non-inferiority rule: CI lower bound" in ni.reason and ni.comparison["mcnemar"]["only_baseline"] == 10
    strict = champion_check("accuracy", c.candidate, c.baseline, 0.0, "3", "re-scored", c, "point")
    assert not strict.passed and strict.rule == "point" and strict.observed == pytest.approx(0.005)
    assert "point rule: regression 0.0050 <= 0.0000 required: FAILED" in strict.reason
    # A margin smaller than the interval's reach: not shown to be non-inferior.
    assert not champion_check("accuracy", c.candidate, c.baseline, 0.006, "3", "", c, "non_inferiority").passed
    # Without per-row predictions the record says the point rule decided.
    fallback = champion_check("accuracy", 0.80, 0.81, 0.02, "3", "recorded figure", None, "non_inferiority")
    assert fallback.passed and fallback.rule == "point" and "point rule used" in fallback.reason
    assert fallback.name == CHAMPION_CHECK


def test_slices_on_a_small_frame(tmp_path):
    frame = pd.DataFrame({"text": ["a b", "a b c d e", "a", "a b c", "x y z w v u"],
                          "label": ["neg", "pos", "pos", "neg", "pos"],
                          "source": ["web", "app", "web", "app", "web"]})
    path = tmp_path / "eval.csv"
    frame.to_csv(path, index=False)
    labels, gold = ["neg", "pos"], np.array([0, 1, 1, 0, 1])
    lengths = np.array([len(t.split()) for t in frame.text])
    assert select_rows(SliceConfig(name="pos", label=["pos"]), "gate.slices[0]", labels, gold).tolist() == [1, 2, 4]
    assert select_rows(SliceConfig(name="short", tokens=[0, 3]), "k", labels, gold, lengths).tolist() == [0, 2]
    assert select_rows(SliceConfig(name="long", tokens=[5, None]), "k", labels, gold, lengths).tolist() == [1, 4]
    rows = all_slice_rows([SliceConfig(name="web", column="source", values=["web"])], labels, gold,
                          list(frame.text), tokenizer_source=None, eval_path=path)
    assert rows == {"web": [0, 2, 4]}
    figs = slice_figures(rows, np.array([0, 0, 1, 0, 0]), gold, 2)
    assert figs["web"]["rows"] == 3 and figs["web"]["accuracy"] == pytest.approx(2 / 3)  # rows 0 and 2 right
    failed = slice_accuracy_checks(figs, 0.7)
    assert [(c.name, c.passed) for c in failed] == [("slice_accuracy:web", False)]
    with pytest.raises(SliceError, match=r"gate.slices\[0\] \('none'\): selects no eval rows"):
        select_rows(SliceConfig(name="none", tokens=[50, None]), "gate.slices[0]", labels, gold, lengths)
    with pytest.raises(SliceError, match=r"unknown label\(s\) \['meh'\]"):
        select_rows(SliceConfig(name="meh", label=["meh"]), "gate.slices[1]", labels, gold)
    with pytest.raises(SliceError, match="column 'region' not found"):
        all_slice_rows([SliceConfig(name="r", column="region", values=["eu"])], labels, gold, list(frame.text),
                       tokenizer_source=None, eval_path=path)


def test_slice_vs_champion_names_the_failing_slice():
    gold = np.zeros(40, dtype=int)
    champ = np.zeros(40, dtype=int)
    cand = champ.copy()
    cand[:15] = 1  # much worse on the first 20 rows (the "short" slice), equal elsewhere
    comps = {name: paired_comparison(cand[idx], champ[idx], gold[idx], resamples=500, seed=0)
             for name, idx in {"short": np.arange(20), "long": np.arange(20, 40)}.items()}
    checks = {c.name: c for c in slice_champion_checks(comps, 0.1, "2")}
    assert not checks["slice_vs_champion:short"].passed and checks["slice_vs_champion:long"].passed
    assert "on slice 'short'" in checks["slice_vs_champion:short"].reason


def test_gate_config_rejects_bad_confidence_and_slices():
    for bad, key in (({"confidence": 1.0}, "gate.confidence"), ({"confidence": 0}, "gate.confidence"),
                     ({"slices": [{"name": "x"}]}, "gate.slices.0"),
                     ({"slices": [{"name": "x", "tokens": [5, 2]}]}, "gate.slices.0"),
                     ({"slices": [{"name": "x", "label": ["a"]}, {"name": "x", "label": ["b"]}]}, "gate.slices"),
                     ({"champion_rule": "vibes"}, "gate.champion_rule")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            params_from_dict(tiny_params(gate=bad))
    assert GateConfig().champion_rule == "non_inferiority"


def test_task_signature_differences_name_both_label_sets():
    mine = {"labels": ["ABBR", "DESC"], "input_columns": ["text"], "text_pair": False}
    theirs = {"labels": ["negative", "neutral", "positive"], "input_columns": ["text"], "text_pair": False}
    assert differences(mine, theirs) == ["labels ['ABBR', 'DESC'] (this run) vs ['negative', 'neutral', 'positive'] "
                                         "(champion)"]
    assert differences(theirs, dict(theirs)) == []
    pair = {**theirs, "input_columns": ["sentence1", "sentence2"], "text_pair": True}
    assert differences(pair, theirs)[0].startswith("inputs ['sentence1', 'sentence2'] (this run)")


def test_task_identity_against_a_real_registry(tmp_path):
    """A champion of another label set stops the run with both label sets named, unless --new-task."""
    import json

    from mlflow import MlflowClient

    from distillery.config import params_from_dict
    from tasks.task_identity import SIGNATURE_TAG, TaskMismatch, check_task_identity

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("distillery-student")
    mv = client.create_model_version("distillery-student", str(tmp_path), run_id=None)
    client.set_model_version_tag("distillery-student", mv.version, SIGNATURE_TAG, json.dumps(
        {"labels": ["negative", "neutral", "positive"], "input_columns": ["text"], "text_pair": False}))
    client.set_registered_model_alias("distillery-student", "champion", mv.version)
    params = params_from_dict(tiny_params())
    vdir = tmp_path / params.paths.validated_dir
    vdir.mkdir(parents=True)
    (vdir / "labels.json").write_text(json.dumps({"labels": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]}))
    with pytest.raises(TaskMismatch) as info:
        check_task_identity(tmp_path, params, client, None)
    msg = str(info.value)
    assert "this run's task differs from champion v1's" in msg
    assert "labels ['ABBR', 'DESC', 'ENTY', 'HUM', 'LOC', 'NUM'] (this run) vs ['negative', 'neutral', 'positive']" in msg
    assert "set a new register.model_name" in msg and '--new-task --reason "..."' in msg
    ok = check_task_identity(tmp_path, params, client, "question types replace sentiment")
    assert ok["new_task"] is True and ok["champion"] == "1"
    (vdir / "labels.json").write_text(json.dumps({"labels": ["negative", "neutral", "positive"]}))
    assert check_task_identity(tmp_path, params, client, None)["new_task"] is False
