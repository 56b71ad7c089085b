"""Text-length drift against the champion's data: profiles and PSI on hand-countable lengths."""

import math

import pytest

from distillery.drift import check_length_shift, length_profile, population_stability_index


def texts(*lengths):
    return ["x" * n for n in lengths]


def test_profile_bins_at_the_deciles():
    p = length_profile(texts(*range(1, 101)))
    assert p["rows"] == 100 and len(p["edges"]) == 9 and p["shares"] == [0.1] * 10
    assert p["mean_chars"] == 50.5


def test_ties_merge_bins():
    p = length_profile(texts(*([5] * 60 + [9] * 40)))
    assert p["edges"] == [5.0, 9.0]           # the deciles are only 5s and 9s
    assert p["shares"] == [0.0, 0.6, 0.4]     # below 5, [5, 9), 9 and up


def test_psi_by_hand():
    ref = {"edges": [10], "shares": [0.5, 0.5]}
    assert population_stability_index(ref, texts(1, 20)) == 0.0
    # 3 of 4 texts below 10: (0.75-0.5)ln(0.75/0.5) + (0.25-0.5)ln(0.25/0.5)
    expected = 0.25 * math.log(1.5) + (-0.25) * math.log(0.5)
    assert population_stability_index(ref, texts(1, 2, 3, 20)) == pytest.approx(expected)
    # an empty bin counts as a share of 1e-4, not zero (no infinite PSI)
    assert population_stability_index(ref, texts(1, 2)) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))


def test_shift_decision():
    champion = {"train": length_profile(texts(*range(10, 110))), "eval": length_profile(texts(*range(10, 110)))}
    same = {"train": texts(*range(10, 110)), "eval": texts(*range(10, 110))}
    longer = {"train": texts(*range(10, 110)), "eval": texts(*range(60, 160))}
    ok = check_length_shift(same, champion, "3", 0.1, 0.25)
    assert ok["status"] == "passed" and ok["splits"]["eval"]["psi"] == 0.0
    bad = check_length_shift(longer, champion, "3", 0.1, 0.25)
    assert bad["status"] == "failed" and bad["splits"]["train"]["status"] == "passed"
    assert bad["splits"]["eval"]["psi"] > 0.25
    assert "champion version 3" in bad["reason"] and "eval: PSI" in bad["reason"] and "mean 60 -> 110" in bad["reason"]
    assert check_length_shift(longer, champion, "3", 0.1, None)["status"] == "warning"


def test_shift_skipped_and_said_why():
    assert "no champion yet" in check_length_shift({"train": texts(1)}, None, None, 0.1, 0.25)["reason"]
    assert "no length profile" in check_length_shift({"train": texts(1)}, None, "2", 0.1, 0.25)["reason"]
    assert check_length_shift({"train": texts(1)}, None, "2", None, None)["status"] == "skipped"
