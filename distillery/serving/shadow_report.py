"""The shadow report: champion vs shadow on logged traffic, from the prediction log.

Rows are paired by (request id, row): the champion's answer and the shadow's for the same input.
Labelled rows are those with feedback. "Not worse" is the gate's rule (gate.champion_check):
acc(champion) - acc(challenger) <= gate.max_regression.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from distillery.gate import champion_check
from distillery.serving.predlog import connect
from distillery.serving.stats import paired_accuracy


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    arr = np.asarray(values, dtype=float)
    return {"n": int(arr.size), "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean())}


def shadow_report(path: str | Path, *, shadow_version: str | None = None, max_regression: float | None = 0.0,
                  n_boot: int = 2000, seed: int = 0) -> dict:
    """Figures for the log at `path`; `shadow_version` restricts it to one challenger version."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prediction log (start `distillery serve-model` with --log)")
    conn = connect(path)
    try:
        return _report(conn, shadow_version, max_regression, n_boot, seed, str(path))
    finally:
        conn.close()


def _report(conn: sqlite3.Connection, shadow_version, max_regression, n_boot, seed, where) -> dict:
    filt, args = ("AND s.version = ?", [str(shadow_version)]) if shadow_version is not None else ("", [])
    pairs = conn.execute(
        "SELECT c.label, s.label, f.label, c.version, s.version FROM predictions c "
        "JOIN predictions s ON s.request_id = c.request_id AND s.row = c.row AND s.role = 'shadow' "
        "LEFT JOIN feedback f ON f.request_id = c.request_id AND f.row = c.row "
        f"WHERE c.role = 'champion' {filt}", args).fetchall()
    agree = sum(1 for c, s, *_ in pairs if c == s)
    labelled = [(c, s, t) for c, s, t, *_ in pairs if t is not None]
    stats = paired_accuracy([t for *_, t in labelled], [c for c, _, _ in labelled], [s for _, s, _ in labelled],
                            n_boot=n_boot, seed=seed)
    latency = {}
    for role in ("champion", "shadow"):
        vfilt = "AND version = ?" if role == "shadow" and shadow_version is not None else ""
        rows = conn.execute(f"SELECT MAX(latency_ms) FROM predictions WHERE role = ? {vfilt} GROUP BY request_id",
                            [role] + ([str(shadow_version)] if vfilt else [])).fetchall()
        latency[role] = _percentiles([r[0] for r in rows])
    champion_versions = sorted({p[3] for p in pairs}, key=_version_key)
    shadow_versions = sorted({p[4] for p in pairs}, key=_version_key)
    check = None
    if labelled:
        check = champion_check("accuracy", stats["accuracy_b"], stats["accuracy_a"],
                               0.0 if max_regression is None else max_regression,
                               ",".join(champion_versions), f"shadow traffic, {len(labelled)} labelled rows")
    return {"log": where, "shadow_version": shadow_version,
            "champion_versions": champion_versions, "shadow_versions": shadow_versions,
            "paired_rows": len(pairs), "agreement": agree / len(pairs) if pairs else None,
            "labelled_rows": len(labelled),
            "accuracy": {"champion": stats["accuracy_a"], "shadow": stats["accuracy_b"]},
            "paired": {**stats, "a": "champion", "b": "shadow"},
            "latency": latency,
            "not_worse": None if check is None else {"passed": check.passed, "reason": check.reason}}


def _version_key(v: str):
    return (0, int(v)) if str(v).isdigit() else (1, str(v))


def format_table(report: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    def ms(x):
        return "-" if x is None else f"{x:.2f}"

    p = report["paired"]
    lines = [f"shadow report ({report['log']}): {report['paired_rows']} paired rows, "
             f"{report['labelled_rows']} labelled; agreement {pct(report['agreement'])}",
             f"{'role':<10} {'versions':<12} {'accuracy':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'requests':>9}"]
    for role, versions in (("champion", report["champion_versions"]), ("shadow", report["shadow_versions"])):
        lat = report["latency"][role]
        lines.append(f"{role:<10} {','.join(versions) or '-':<12} {pct(report['accuracy'][role]):>9} "
                     f"{ms(lat['p50_ms']):>8} {ms(lat['p95_ms']):>8} {ms(lat['p99_ms']):>8} {lat['n']:>9}")
    if p["n"]:
        lines.append(f"shadow - champion accuracy: {100 * p['difference']:+.2f} points, "
                     f"{int(100 * p['confidence'])}% bootstrap CI [{100 * p['ci'][0]:+.2f}, {100 * p['ci'][1]:+.2f}]; "
                     f"McNemar exact p = {p['mcnemar_p']:.4g} (champion only right {p['a_only_correct']}, "
                     f"shadow only right {p['b_only_correct']})")
    if report["not_worse"] is not None:
        lines.append(report["not_worse"]["reason"])
    return "\n".join(lines)


def render_html(report: dict) -> str:
    """The report as its own self-contained page (the run report's style, no external files)."""
    from html import escape

    from distillery.html_report import CSS

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    def ms(x):
        return "-" if x is None else f"{x:.2f}"

    rows = "".join(
        f"<tr><td>{role}</td><td>{escape(', '.join(report[f'{role}_versions']) or '-')}</td>"
        f"<td class='n'>{pct(report['accuracy'][role])}</td>"
        + "".join(f"<td class='n'>{ms(report['latency'][role][k])}</td>" for k in ("p50_ms", "p95_ms", "p99_ms"))
        + f"<td class='n'>{report['latency'][role]['n']}</td></tr>" for role in ("champion", "shadow"))
    p, verdict = report["paired"], report["not_worse"]
    paired = "" if not p["n"] else (
        f"<p>shadow &minus; champion accuracy: {100 * p['difference']:+.2f} points, {int(100 * p['confidence'])}% "
        f"bootstrap CI [{100 * p['ci'][0]:+.2f}, {100 * p['ci'][1]:+.2f}]; McNemar exact p = {p['mcnemar_p']:.4g} "
        f"(champion only right {p['a_only_correct']}, shadow only right {p['b_only_correct']})</p>")
    gate = "" if verdict is None else (
        f"<p><span class='verdict {'pass' if verdict['passed'] else 'fail'}'>"
        f"{'NOT WORSE' if verdict['passed'] else 'WORSE'}</span> {escape(verdict['reason'])}</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Shadow report</title><style>{CSS}</style>"
            f"</head><body><h1>Shadow report</h1><p class='note'>{escape(report['log'])}: {report['paired_rows']} "
            f"paired rows, {report['labelled_rows']} labelled; agreement {pct(report['agreement'])}</p>"
            "<table><thead><tr><th>role</th><th>versions</th><th>accuracy (labelled)</th><th>p50 ms</th>"
            f"<th>p95 ms</th><th>p99 ms</th><th>requests</th></tr></thead><tbody>{rows}</tbody></table>"
            f"{paired}{gate}</body></html>")
