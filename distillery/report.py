"""Console output: the stage table, the gate decision and the registry state."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

COLUMNS = (("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"), ("size_mb", "size MB", "{:.2f}"),
           ("params", "params", "{:,}"), ("latency_p50_ms", "p50 ms", "{:.2f}"),
           ("latency_p95_ms", "p95 ms", "{:.2f}"), ("throughput_sps", "samples/s", "{:.1f}"))


def _fmt(fmt: str, value) -> str:
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
        table.add_row(r.get("stage", r.get("version", "")), *(_fmt(f, r.get(k)) for k, _, f in COLUMNS))
    return table


def _console() -> Console:
    """At least 120 columns, so the table is never truncated in logs and pipes (rich's default is 80)."""
    c = Console()
    return c if c.width >= 120 else Console(width=120)


def print_run_summary(result: dict, console: Console | None = None) -> None:
    console = console or _console()
    console.print(stage_table(result["table"]))
    gate = result["gate"]
    console.print(f"[bold]Gate: {'PASSED' if gate['passed'] else 'FAILED'}[/bold]")
    for reason in gate["reasons"]:
        console.print(f"  - {reason}")
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
    if status.get("history"):
        console.print("Champion history (newest last):")
        for h in status["history"][-10:]:
            console.print(f"  {h['at']}  {h['kind']}: {h['from'] or '(none)'} -> {h['version']} by {h['by']}: {h['reason']}")
    gate = status.get("last_gate")
    if gate:
        console.print(f"Last gate decision: {'PASSED' if gate['passed'] else 'FAILED'}")
        for reason in gate["reasons"]:
            console.print(f"  - {reason}")
