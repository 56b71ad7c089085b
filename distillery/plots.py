"""Accuracy against a cost (latency, size), every model a labelled point: the run report's plots
and the benchmark's draw them the same way."""

from __future__ import annotations

import io


def _plain_log_formatter():
    """Log-axis tick labels where matplotlib's LogFormatter puts them, written plainly (0.2, 5, 10,
    not 2x10^-1); minor ticks are labelled only when the axis spans less than a decade."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4))


def accuracy_scatter(points: list[dict], x_key: str, x_label: str, y_label: str, title: str,
                     figsize: tuple[float, float] = (8.5, 4.6), dpi: int = 120) -> bytes:
    """A PNG of accuracy (in %) against `x_key` on a log scale.

    Each point is a dict with `key` (written beside the point), `accuracy`, `x_key`, and optionally
    `label` (its legend entry; no legend when no point has one), `color` and `marker` ("*" is drawn
    larger: the model the plot is about).
    """
    # The object API without pyplot: no global figure state and no GUI backend, safe in any thread.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.subplots()
    for i, p in enumerate(points):
        marker = p.get("marker", "o")
        ax.scatter(p[x_key], 100 * p["accuracy"], color=p.get("color", "tab:blue"), marker=marker,
                   s=110 if marker == "*" else 40, zorder=3, label=p.get("label"))
        ax.annotate(p["key"], (p[x_key], 100 * p["accuracy"]), textcoords="offset points",
                    xytext=(6, 4 if i % 2 == 0 else -11),  # alternate above / below: neighbours stay legible
                    fontsize=8)
    if any(p.get("label") for p in points):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.margins(x=0.15, y=0.15)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain_log_formatter())
    ax.xaxis.set_minor_formatter(_plain_log_formatter())
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
