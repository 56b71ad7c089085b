"""Must-pass suite: loading with errors naming file and row, scoring, regressions named."""

import pytest

from distillery.gate import suite_champion_check, suite_check
from distillery.suite import SuiteError, load_suite, regressions, score_suite

LABELS = ["negative", "neutral", "positive"]
SUITE = """
examples:
  - {id: refund, text: "I want my money back", label: negative}
  - {id: fine, text: "it was fine", label: neutral}
invariance:
  - {id: name-swap, texts: ["Anna loved it", "Omar loved it"]}
"""


def test_suite_scores_examples_and_invariance_and_names_regressions(tmp_path):
    path = tmp_path / "must_pass.yaml"
    path.write_text(SUITE)
    suite = load_suite(path, LABELS)
    assert suite.texts == ["I want my money back", "it was fine", "Anna loved it", "Omar loved it"]
    champion = score_suite(suite, ["negative", "positive", "positive", "positive"])
    candidate = score_suite(suite, ["neutral", "neutral", "positive", "negative"])
    assert (champion["passed"], champion["total"], champion["failed_ids"]) == (2, 3, ["fine"])
    assert (candidate["passed"], candidate["failed_ids"]) == (1, ["refund", "name-swap"])
    # `fine` is newly passed; `refund` and the name swap are regressions: the champion passed them.
    assert regressions(candidate, champion) == ["refund", "name-swap"]
    [check] = suite_champion_check(regressions(candidate, champion), "2")
    assert not check.passed and check.reason == ("must_pass_vs_champion: 2 must-pass example(s) champion v2 passes "
                                                 "and this model fails: refund, name-swap: FAILED")
    assert suite_champion_check([], "2")[0].passed and suite_champion_check([], None)[0].skipped
    assert suite_champion_check(None, "2") == []  # empty suite: no check
    [report] = suite_check(candidate)
    assert report.passed and "1 of 3 pass; failing: refund, name-swap" in report.reason


@pytest.mark.parametrize("text, message", [
    ("examples:\n  - {id: a, text: hi, label: angry}\n",
     r"examples\[0\] \('a'\): unknown label 'angry'; the task's labels are \['negative', 'neutral', 'positive'\]"),
    ("examples:\n  - {text: hi}\n", r"examples\[0\] \('examples\[0\]'\): unknown label None"),
    ("examples:\n  - {id: a, text: '', label: negative}\n", r"examples\[0\] \('a'\): `text` must be a non-empty"),
    ("examples:\n  - just a string\n", r"examples\[0\]: expected a mapping"),
    ("invariance:\n  - {id: g, texts: [only one]}\n", r"invariance\[0\] \('g'\): `texts` must be a list of at least two"),
    ("examples:\n  - {id: a, text: x, label: negative}\n  - {id: a, text: y, label: negative}\n",
     r"examples\[1\]: id 'a' is used twice"),
    ("tests: []\n", r"expected a mapping with `examples` and/or `invariance`; got \['tests'\]"),
    ("examples: [\n", r"not a readable YAML file"),
])
def test_bad_suite_files_name_file_and_row(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(path, LABELS)
    assert str(path) in str(info.value)


def test_missing_suite_file_names_the_key(tmp_path):
    with pytest.raises(SuiteError, match=r"gate.suite: .*nope.yaml: file not found"):
        load_suite(tmp_path / "nope.yaml", LABELS)
    assert len(load_suite(_empty(tmp_path), LABELS)) == 0


def _empty(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("examples: []\ninvariance: []\n")
    return p
