"""Console output: the stage table, the gate decision and the registry state."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

COLUMNS = (("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"), ("size_mb", "size MB", "{:.2f}"),
           ("params", "params", "{:,}"), ("latency_p50_ms", "p50 ms", "{:.2f}"),
           ("latency_p95_ms", "p95 ms", "{:.2f}"), ("throughput_sps", "samples/s", "{:.1f}"))


def format_figure(fmt: str, value) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(int(float(value)) if fmt == "{:,}" else float(value))
    except (TypeError, ValueError):
        return str(value)


def stage_table(rows: list[dict], title: str = "Stages (eval split)") -> Table:
    table = Table(title=title)
    table.add_column("model")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(r.get("stage", r.get("version", "")), *(format_figure(f, r.get(k)) for k, _, f in COLUMNS))
    return table


def _console() -> Console:
    """At least 120 columns, so the table is never truncated in logs and pipes (rich's default is 80)."""
    c = Console()
    return c if c.width >= 120 else Console(width=120)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def gate_rows(decision: dict) -> list[dict]:
    """Every check of a gate decision as display strings: name, observed, threshold, status, and
    detail (the reason without the check's name, e.g. "0.8450 >= 0.6000 required: ok")."""
    rows = []
    for c in decision["checks"]:
        status = c.get("status") or ("pass" if c["passed"] else "fail")
        detail = c["reason"].removeprefix(f"{c['name']}: ").removeprefix("skipped: ")
        rows.append({"name": c["name"], "observed": _num(c["observed"]), "threshold": _num(c["threshold"]),
                     "status": status, "detail": detail})
    return rows


def gate_table(decision: dict, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for header, justify in (("check", "left"), ("observed", "right"), ("threshold", "right"),
                            ("result", "left"), ("detail", "left")):
        table.add_column(header, justify=justify)
    style = {"pass": "green", "fail": "bold red", "skipped": "yellow"}
    for r in gate_rows(decision):
        table.add_row(r["name"], r["observed"], r["threshold"], f"[{style[r['status']]}]{r['status']}[/]", r["detail"])
    return table


def print_run_summary(result: dict, console: Console | None = None) -> None:
    console = console or _console()
    console.print(stage_table(result["table"]))
    gate = result["gate"]
    console.print(gate_table(gate, f"Gate: {'PASSED' if gate['passed'] else 'FAILED'}"))
    reg = result["registration"]
    console.print(f"[bold]Registry:[/bold] version {reg['version']} with alias(es) {', '.join(reg['aliases'])}")
    console.print(f"  {reg['reason']}")
    skipped = [s for s, ran in result["ran"].items() if not ran]
    if skipped:
        console.print(f"Unchanged stages skipped by DVC: {', '.join(skipped)}")


def print_status(status: dict, console: Console | None = None) -> None:
    console = console or _console()
    console.print(f"[bold]{status['model_name']}[/bold]: champion "
                  f"{status['champion'] or '(none)'}, challenger {status['challenger'] or '(none)'}")
    if status["versions"]:
        rows = [{**v, "version": f"v{v['version']} {','.join(v['aliases'])}"} for v in status["versions"]]
        console.print(stage_table(rows, title="Registered versions"))
        console.print("Gate decisions (newest first):")
        for v in status["versions"][:10]:
            verdict = {"true": "passed", "false": "FAILED"}.get(v.get("gate_passed"), "unknown")
            state = v.get("registration", "complete")
            note = "" if state == "complete" else f" [registration {state}]"
            console.print(f"  v{v['version']}: gate {verdict}; {v.get('promotion') or '(no promotion record)'}{note}")
    if status.get("history"):
        console.print("Champion history (newest last):")
        for h in status["history"][-10:]:
            console.print(f"  {h['at']}  {h['kind']}: {h['from'] or '(none)'} -> {h['version']} by {h['by']}: {h['reason']}")
    last = status.get("last_decision")
    if last:
        gate = last["decision"]
        where = (f"version {last['version']}, {last.get('decided_at', '')}" if last.get("version")
                 else "thresholds only: not registered yet")
        console.print(gate_table(gate, f"Last gate decision: {'PASSED' if gate['passed'] else 'FAILED'} ({where})"))
        if last.get("reason"):
            console.print(f"  {last['reason']}")
