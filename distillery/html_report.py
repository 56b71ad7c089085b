"""The run report (`reports/index.html`): one self-contained HTML page per pipeline run.

Pure: takes what a run produced, as one dict (see `tasks/run_report.py`, which gathers it from the
stage reports and the registry), and returns the page. Self-contained means no external URL at all:
the CSS is inline and the plots are base64 PNGs in `data:` URIs, so the page opens the same from
disk, from an MLflow artifact view, or mailed on.
"""

from __future__ import annotations

import base64
from html import escape

from distillery.errors import DistilleryError
from distillery.plots import accuracy_scatter
from distillery.report import COLUMNS, format_figure, gate_rows

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #1d1d1f; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #d0d0d0; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 600; }
.pass { background: #1e7d32; } .fail { background: #c62828; } .skipped, .muted { background: #8a8a8a; }
tr.row-fail td { background: #fdecea; } tr.row-skipped td { color: #777; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } .plots img { width: calc(50% - 8px); min-width: 420px; border: 1px solid #eee; }
.cms { display: flex; flex-wrap: wrap; gap: 32px; } .note { color: #555; font-size: 13px; }
code { background: #f5f5f5; padding: 0 3px; }
"""

STAGE_COLORS = {"teacher": "tab:blue", "champion": "tab:green"}  # the run's own stages: tab:red


class ReportError(DistilleryError, ValueError):
    """The run's files lack something the report needs; the message names the file and key."""


def _e(value) -> str:
    return escape("" if value is None else str(value))


def _verdict(ok: bool | None, yes: str = "PASSED", no: str = "FAILED", none: str = "not decided") -> str:
    cls, text = ("muted", none) if ok is None else (("pass", yes) if ok else ("fail", no))
    return f'<span class="verdict {cls}">{_e(text)}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None, table_id: str = "") -> str:
    """Rows are already-escaped HTML cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{row_classes[i] if row_classes else ""}">'
        + "".join(f'<td class="{"n" if j in numeric else ""}">{c}</td>' for j, c in enumerate(r)) + "</tr>"
        for i, r in enumerate(rows))
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline(data: dict) -> str:
    out = data["outcome"]
    if out.get("failure"):
        return f'<p>{_verdict(False, no="RUN FAILED")} {_e(out["failure"])}</p>'
    gate, reg = out.get("gate_passed"), out.get("registration")
    parts = [f"Gate {_verdict(gate)}"]
    if reg:
        parts.append(f"registry: version {_e(reg['version'])}, aliases {_e(', '.join(reg['aliases']) or '(none)')}"
                     f"{' (promoted to champion)' if reg.get('promoted') else ''}. {_e(reg['reason'])}")
    return "<p>" + " &nbsp; ".join(parts) + "</p>"


def _stage_section(stages: list[dict]) -> str:
    headers = ["stage", "this run"] + [h for _, h, _ in COLUMNS]
    rows = [[_e(s["stage"]), _e(s["state"])] + [_e(format_figure(f, s["figures"].get(k)) if s.get("figures") else "-")
                                                 for k, _, f in COLUMNS] for s in stages]
    classes = ["row-fail" if s["state"].startswith("failed") else "" for s in stages]
    return "<h2>Stages</h2>" + _table(headers, rows, numeric=set(range(2, 2 + len(COLUMNS))),
                                      row_classes=classes, table_id="stages")


def _plot_img(points: list[dict], x_key: str, x_label: str, alt: str, plot_id: str) -> str:
    png = accuracy_scatter(points, x_key, x_label, "eval accuracy (%)", alt, figsize=(6.2, 4.0), dpi=110)
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img id="{plot_id}" class="plot" alt="{_e(alt)}" src="{src}">'


def _plots_section(points: list[dict]) -> str:
    if not points:
        return "<h2>Accuracy vs latency and size</h2><p>No model was measured in this run.</p>"
    pts = [{**p, "color": STAGE_COLORS.get(p["kind"], "tab:red"),
            "marker": "*" if p["kind"] == "final" else ("D" if p["kind"] == "champion" else "o")} for p in points]
    notes = ("<li>blue: the teacher; red: this run's stages (star: the final model); green diamond: the "
             "current champion. Accuracy on the eval split; latency and size as each stage measured them.</li>"
             + "".join(f"<li>{_e(p['note'])}</li>" for p in points if p.get("note")))
    return ("<h2>Accuracy vs latency and size</h2><div class=\"plots\">"
            + _plot_img(pts, "latency_p50_ms", "batch-1 latency p50 (ms, log scale)", "accuracy vs latency",
                        "plot-latency")
            + _plot_img(pts, "size_mb", "size on disk (MB, log scale)", "accuracy vs size", "plot-size")
            + f"</div><ul class=\"note\">{notes}</ul>")


def _gate_section(gate: dict | None, source: str) -> str:
    if gate is None:
        return "<h2>Gate</h2><p>Not decided: the run stopped before the evaluate stage.</p>"
    rows = gate_rows(gate)
    cells = [[_e(r["name"]), _e(r["observed"]), _e(r["threshold"]), _verdict(
        None if r["status"] == "skipped" else r["status"] == "pass", "pass", "fail", "skipped"), _e(r["detail"])]
        for r in rows]
    return (f"<h2>Gate {_verdict(gate['passed'])}</h2><p class=\"note\">{_e(source)}</p>"
            + _table(["check", "observed", "threshold", "result", "detail"], cells, numeric={1, 2},
                     row_classes=[f"row-{r['status']}" for r in rows], table_id="gate"))


def _interval_plot(comparisons: list[dict]) -> str:
    """A forest plot as inline SVG: each difference as a dot, its interval as a bar, zero as a line."""
    if not comparisons:
        return ""
    lo = min(min(c["ci_low"], c["difference"]) for c in comparisons + [{"ci_low": -0.01, "difference": 0}])
    hi = max(max(c["ci_high"], c["difference"]) for c in comparisons + [{"ci_high": 0.01, "difference": 0}])
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    w, left, row = 640, 260, 26

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (w - left - 20)

    parts = [f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{row * len(comparisons) + 4}" stroke="#888" '
             'stroke-dasharray="4 3"/>']
    for i, c in enumerate(comparisons):
        y = row * i + row / 2 + 4
        color = "#c62828" if c.get("passed") is False else "#1565c0"
        parts.append(f'<text x="4" y="{y + 4:.1f}" font-size="12">{_e(c["label"])}</text>'
                     f'<line x1="{x(c["ci_low"]):.1f}" y1="{y:.1f}" x2="{x(c["ci_high"]):.1f}" y2="{y:.1f}" '
                     f'stroke="{color}" stroke-width="3"/><circle cx="{x(c["difference"]):.1f}" cy="{y:.1f}" r="4" '
                     f'fill="{color}"><title>{_e(c["label"])}: {c["difference"]:+.4f} '
                     f'[{c["ci_low"]:+.4f}, {c["ci_high"]:+.4f}]</title></circle>')
    height = row * len(comparisons) + 24
    parts.append(f'<text x="{x(lo):.1f}" y="{height - 4}" font-size="11">{lo:+.3f}</text>'
                 f'<text x="{x(0) - 4:.1f}" y="{height - 4}" font-size="11">0</text>'
                 f'<text x="{x(hi) - 40:.1f}" y="{height - 4}" font-size="11">{hi:+.3f}</text>')
    return (f'<svg id="plot-differences" role="img" aria-label="paired differences and their intervals" '
            f'width="{w}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _comparison_section(comparisons: list[dict]) -> str:
    if not comparisons:
        return ""
    cells = [[_e(c["label"]), _e(c["metric"]), f"{c['difference']:+.4f}",
              f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]", _e(c["n"]),
              f"{c['mcnemar']['only_candidate']} / {c['mcnemar']['only_baseline']}", f"{c['mcnemar']['p_value']:.3g}"]
             for c in comparisons]
    conf = round(comparisons[0]["confidence"] * 100, 2)
    return ("<h2>Paired comparisons (same eval rows)</h2>"
            f"<p class=\"note\">Difference in the metric with its {conf:g}% paired bootstrap interval "
            f"({comparisons[0]['resamples']} resamples, seed {comparisons[0]['seed']}) and McNemar's exact test "
            "on the rows only one model gets right.</p>" + _interval_plot(comparisons)
            + _table(["comparison", "metric", "difference", "interval", "rows", "only new / only other right",
                      "McNemar p"], cells, numeric={2, 4, 6}, table_id="comparisons",
                     row_classes=["row-fail" if c.get("passed") is False else "" for c in comparisons]))


def _slice_section(slices: dict | None) -> str:
    if not slices or not any(slices.get("stages", {}).values()):
        return ""
    stages = [s for s, f in slices["stages"].items() if f]
    names = list(slices["stages"][stages[-1]])
    failed = set(slices.get("failed", []))
    cells = [[_e(n) + (" " + _verdict(False, no="failed") if n in failed else ""),
              _e(slices["stages"][stages[-1]][n]["rows"]),
              *(f"{slices['stages'][s][n]['accuracy']:.4f}" if n in slices["stages"][s] else "-" for s in stages)]
             for n in names]
    return ("<h2>Slices</h2>" + _table(["slice", "rows", *(f"{s} accuracy" for s in stages)], cells,
                                       numeric=set(range(1, len(stages) + 2)), table_id="slices",
                                       row_classes=["row-fail" if n in failed else "" for n in names]))


def _confusion_table(cm: dict) -> str:
    labels, matrix = cm["labels"], cm["matrix"]
    if len(matrix) != len(labels) or any(len(r) != len(labels) for r in matrix):
        raise ReportError(f"{cm['source']}: confusion_matrix is {len(matrix)}x{len(matrix[0]) if matrix else 0}, "
                          f"but there are {len(labels)} labels {labels}")
    top = max((v for r in matrix for v in r), default=0) or 1
    head = "<th>gold \\ predicted</th>" + "".join(f"<th>{_e(lab)}</th>" for lab in labels)
    body = ""
    for i, (lab, r) in enumerate(zip(labels, matrix)):
        cells = ""
        for j, v in enumerate(r):
            # Shade by count: green on the diagonal (right), red off it (confused).
            hue, alpha = (120 if i == j else 0), 0.08 + 0.6 * v / top
            cells += f'<td class="n" style="background: hsla({hue}, 60%, 45%, {alpha:.2f})">{v}</td>'
        body += f"<tr><th>{_e(lab)}</th>{cells}</tr>"
    total = sum(map(sum, matrix))
    right = sum(matrix[i][i] for i in range(len(labels)))
    return (f'<div><h3>{_e(cm["title"])}</h3><table class="confusion"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table><p class=\"note\">{right} of {total} eval rows right</p></div>")


def _confusion_section(matrices: list[dict]) -> str:
    if not matrices:
        return "<h2>Confusion matrices</h2><p>No model was measured in this run.</p>"
    return "<h2>Confusion matrices (eval split)</h2><div class=\"cms\">" + "".join(
        _confusion_table(cm) for cm in matrices) + "</div>"


def _validation_section(v: dict | None, length_shift: str | None) -> str:
    if v is None:
        return "<h2>Data validation</h2><p>No validation report.</p>"
    rows, classes, details = [], [], []
    for r in v.get("results", []):
        failures, warnings = r.get("failures", []), r.get("warnings", [])
        rows.append([_e(r.get("split")), f"<code>{_e(r.get('file'))}</code>",
                     _e("-" if r.get("rows") is None else f"{r['rows']:,}"), _e(len(failures)), _e(len(warnings))])
        classes.append("row-fail" if failures else "")
        for kind, items in (("failed", failures), ("warning", warnings)):
            for f in items:
                where = f" (column <code>{_e(f['column'])}</code>)" if f.get("column") else ""
                details.append(f"<li><b>{kind}: {_e(f['expectation'])}</b>{where} in {_e(r.get('split'))}: "
                               f"{_e(f.get('details'))}</li>")
    out = (f"<h2>Data validation {_verdict(v.get('success'))}</h2>"
           + _table(["split", "file", "rows", "failures", "warnings"], rows, numeric={2, 3, 4}, row_classes=classes,
                    table_id="validation"))
    if details:
        out += f"<ul>{''.join(details)}</ul>"
    if length_shift:
        out += f"<p>Text length vs the champion's data: {_e(length_shift)}</p>"
    if v.get("docs"):
        out += (f"<p class=\"note\">Full Great Expectations result: <code>{_e(v['docs'])}</code> "
                "(also the <code>validation/</code> artifact of the validate run in MLflow)</p>")
    return out


def _lineage_section(lineage: list[tuple[str, str]]) -> str:
    rows = [[_e(k), f"<code>{_e(v)}</code>"] for k, v in lineage]
    return "<h2>Lineage</h2>" + _table(["what", "value"], rows, table_id="lineage")


def render_report(data: dict) -> str:
    """The whole page. `data` keys: title, generated_at, outcome {failure, gate_passed, registration},
    stages, points, gate, gate_source, confusion, validation, length_shift, lineage."""
    body = "".join((
        f"<h1>{_e(data['title'])}</h1><p class=\"note\">{_e(data['generated_at'])}</p>",
        _headline(data),
        _stage_section(data["stages"]),
        _gate_section(data.get("gate"), data.get("gate_source", "")),
        _comparison_section(data.get("comparisons", [])),
        _slice_section(data.get("slices")),
        _plots_section(data["points"]),
        _confusion_section(data["confusion"]),
        _validation_section(data.get("validation"), data.get("length_shift")),
        _lineage_section(data["lineage"]),
    ))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(data['title'])}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
