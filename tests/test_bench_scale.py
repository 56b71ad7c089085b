"""bench/scale.py's arithmetic (the benchmark itself is not a test: hours on 2 cores). ~1 s."""

import math
from pathlib import Path

import pytest

from bench.scale import growth, markdown, measured_stages, size_params, summarize

REPO = Path(__file__).resolve().parents[1]


def test_sizes_past_the_real_rows_come_from_augmentation():
    for rows, expect_copies, expect_train in ((10_000, 0, 10_000), (67_349, 0, 67_349), (160_000, 2, 53_333)):
        raw, bench = {"augment": {}, "distill": {}}, {}
        size_params(raw, bench, rows, available=67_349)
        assert raw["augment"]["copies"] == expect_copies
        assert raw["distill"]["max_train_rows"] == expect_train
        assert raw["distill"]["max_train_rows"] * (expect_copies + 1) == pytest.approx(rows, abs=2)
        assert raw["soft_targets"]["workers"] == 0


def test_growth_exponent_and_memory_ratio():
    sizes = [10_000, 40_000, 160_000]
    assert growth(sizes, [2.0 * n for n in sizes]) == pytest.approx(1.0)
    assert growth(sizes, [3.0 * n ** 2 for n in sizes]) == pytest.approx(2.0)
    results = {n: {s: {"seconds": n / 1000, "peak_rss_mb": 500 + (n / 1000 if s == "distill" else 0)}
                   for s in measured_stages(REPO)} for n in sizes}
    fits = summarize(results)
    assert fits["teacher"]["k"] == pytest.approx(1.0) and fits["teacher"]["rss_ratio"] == pytest.approx(1.0)
    assert fits["distill"]["rss_ratio"] == pytest.approx(660 / 510)
    text = markdown(results, fits, {"rows": 40_000, "one_process_s": 10.0, "dask_s": 6.0, "speedup": 10 / 6})
    assert "1.67x" in text and "160,000 rows" in text and not math.isnan(fits["prune"]["k"])
    text = markdown(results, fits, None, {"command": "python -m bench.scale --rows 10000 40000", "commit": "ab" * 20,
                                          "other_cpu_share": {"10000": 0.02}})
    assert "Produced by `python -m bench.scale --rows 10000 40000` at commit `abababababab`" in text
    assert "10,000 rows 2.0%" in text


def test_the_measured_stages_are_the_graphs_but_demo_data():
    stages = measured_stages(REPO)
    assert stages[0] == "validate" and "demo_data" not in stages
    assert {"teacher", "soft_targets", "distill", "prune", "quantize", "evaluate"} <= set(stages)


def test_growth_is_fitted_on_the_rows_really_distilled():
    # past SST-2's rows, augmentation yields fewer rows than asked: 160k asked, 133k distilled
    sizes, real = [10_000, 40_000, 160_000], {10_000: 10_000, 40_000: 40_000, 160_000: 133_064}
    results = {n: {"distill": {"seconds": real[n] / 400, "peak_rss_mb": 900.0}} for n in sizes}
    assert summarize(results, real)["distill"]["k"] == pytest.approx(1.0)
    assert summarize(results)["distill"]["k"] < 0.95  # the size asked for would understate the growth
    text = markdown(results, summarize(results, real), None, {"distill_rows": {str(n): v for n, v in real.items()}})
    assert "160,000 rows (133,064 distilled)" in text and "40,000 rows: s / MB" in text
