"""The run report page (reports/index.html): rendering, self-containment, and the Chromium check
that the end-to-end test applies to a real run's page (tests/test_pipeline_e2e.py)."""

from __future__ import annotations

import base64

import pytest

from distillery.html_report import ReportError, render_report
from tests.helpers import external_refs

FIGURES = {"accuracy": 0.8, "macro_f1": 0.79, "size_mb": 5.0, "params": 1000, "latency_p50_ms": 2.0,
           "latency_p95_ms": 3.0, "throughput_sps": 100.0}


def failed_validation_run() -> dict:
    failure = {"expectation": "labels in declared set", "column": "label",
               "details": "1 of 31 rows; unexpected labels include '<b>not-a-label</b>'"}
    return {
        "title": "Distillery run pipeline-x", "generated_at": "now",
        "outcome": {"failure": "stage 'validate' failed: data validation failed", "gate_passed": None,
                    "registration": None},
        "stages": [{"stage": "validate", "state": "failed", "figures": None},
                   {"stage": "teacher", "state": "not reached", "figures": None}],
        "points": [], "gate": None, "confusion": [],
        "validation": {"success": False, "results": [
            {"split": "train", "file": "bad_train.csv", "rows": 31, "failures": [failure], "warnings": []}]},
        "lineage": [("git_commit", "abc123")],
    }


def test_a_failed_run_page_says_where_it_stopped_and_escapes_the_data():
    html = render_report(failed_validation_run())
    assert "RUN FAILED" in html and "stage &#x27;validate&#x27; failed" in html
    assert "<td class=\"\">validate</td><td class=\"\">failed</td>" in html
    assert "not reached" in html and "Not decided: the run stopped before the evaluate stage" in html
    assert "Data validation <span class=\"verdict fail\">FAILED</span>" in html
    assert "&lt;b&gt;not-a-label&lt;/b&gt;" in html and "<b>not-a-label</b>" not in html  # data is text, never markup
    assert "<img" not in html and "No model was measured in this run" in html
    assert external_refs(html) == []


def test_confusion_matrix_that_does_not_fit_the_labels_names_its_file():
    data = {**failed_validation_run(), "confusion": [
        {"title": "teacher", "labels": ["neg", "pos"], "matrix": [[1, 2, 0], [0, 3, 0]], "source": "reports/teacher.json"}]}
    with pytest.raises(ReportError, match=r"reports/teacher.json: confusion_matrix is 2x3, but there are 2 labels"):
        render_report(data)


def test_external_refs_finds_what_a_page_would_fetch():
    page = ('<img src="data:image/png;base64,AA"><a href="#gate">x</a><link href="https://cdn.example/x.css">'
            '<style>body { background: url(http://127.0.0.1/bg.png) }</style><script src=/app.js></script>')
    assert external_refs(page) == ["https://cdn.example/x.css", "http://127.0.0.1/bg.png", "/app.js"]


def test_chromium_reports_a_page_that_is_not_self_contained(tmp_path):
    """The checks the end-to-end test makes on the real page can fail: here a plot that is fetched
    from elsewhere is refused, recorded, and not decoded; the inline one is."""
    from distillery.browser import open_page
    from distillery.plots import accuracy_scatter

    png = accuracy_scatter([{"key": "a", "accuracy": 0.5, "size_mb": 1.0}], "size_mb", "MB", "acc", "t")
    assert png.startswith(b"\x89PNG")
    page = tmp_path / "page.html"
    page.write_text(f'<html><body><img id="inline" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                    '<img id="remote" src="http://127.0.0.1:9/plot.png"><table><tbody><tr><td>1</td></tr></tbody></table>'
                    "</body></html>")
    state = open_page(page, tmp_path / "shot.png")
    images = {i["id"]: i for i in state["images"]}
    assert images["inline"]["width"] > 0 and images["remote"]["width"] == 0
    assert state["requests"] == ["http://127.0.0.1:9/plot.png"]
    assert state["tables"][0]["rows"] == 1 and state["tables"][0]["height"] > 0
    assert (tmp_path / "shot.png").read_bytes().startswith(b"\x89PNG")


def test_missing_chromium_is_an_error_that_says_how_to_install_it(tmp_path, monkeypatch):
    from distillery.browser import BrowserError, open_page

    monkeypatch.setenv("DISTILLERY_CHROMIUM", str(tmp_path / "no-chromium"))
    (tmp_path / "p.html").write_text("<html></html>")
    with pytest.raises(BrowserError, match=r"Chromium not found at .*no-chromium: install Debian's `chromium`"):
        open_page(tmp_path / "p.html")



def test_paired_comparisons_are_plotted_and_failing_slices_marked():
    import numpy as np

    from distillery.stats import paired_comparison

    gold = np.array([0, 1] * 20)
    teacher = gold.copy()
    final = gold.copy()
    final[:6] = 1 - final[:6]
    vs_teacher = paired_comparison(final, teacher, gold, resamples=200, seed=0).to_dict()
    data = {**failed_validation_run(), "comparisons": [
        {"label": "quantize - teacher", **vs_teacher},
        {"label": "final - champion, slice short", "passed": False, **vs_teacher}],
        "slices": {"stages": {"teacher": {"short": {"rows": 6, "accuracy": 1.0}},
                              "quantize": {"short": {"rows": 6, "accuracy": 0.0}, "long": {"rows": 34, "accuracy": 1.0}}},
                   "failed": ["short"]}}
    html = render_report(data)
    assert 'id="plot-differences"' in html and html.count("<circle") == 2
    assert f"{vs_teacher['difference']:+.4f}" in html and f"[{vs_teacher['ci_low']:+.4f}, " in html
    assert 'id="comparisons"' in html and "95% paired bootstrap interval (200 resamples, seed 0)" in html
    slices = html[html.index('id="slices"'):]
    assert 'class="row-fail"><td class="">short <span class="verdict fail">failed</span>' in slices
    assert "<th>teacher accuracy</th><th>quantize accuracy</th>" in slices
    assert external_refs(html) == []
