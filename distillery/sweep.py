"""The sweep's pure parts: which members to try, the Pareto front of their figures, which one to keep.

A member is a set of overrides (`{"student.layers": [0, 5], "quantize.method": ...}`) on the
project's params. Each member runs the distill, prune and quantize stage code in its own folder
(flows/sweep.py); this module only decides, from figures, so it is unit-tested on known numbers.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from distillery.config import Params, apply_overrides, params_from_dict

# The front's objectives: (figure, direction). Latency and size are the final (quantized) model's.
OBJECTIVES = (("accuracy", "max"), ("latency_p50_ms", "min"), ("size_mb", "min"))


def expand_space(space: dict[str, list[Any]], sampler: str, samples: int | None, seed: int) -> list[dict[str, Any]]:
    """The members to try: every combination (grid), or `samples` distinct ones drawn with `seed`."""
    keys = list(space)
    grid = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    if sampler == "grid" or samples is None or samples >= len(grid):
        return grid
    picks = np.random.default_rng(seed).choice(len(grid), size=samples, replace=False)
    return [grid[i] for i in sorted(picks)]


def member_name(i: int) -> str:
    return f"m{i:03d}"


def member_paths(out_dir: str, name: str) -> dict[str, str]:
    """Where a member writes: its own model folders and reports under the sweep's folder. It reads
    the project's validated data, teacher and soft targets, which it never writes."""
    base = f"{out_dir}/members/{name}"
    return {"student_dir": f"{base}/student", "pruned_dir": f"{base}/pruned",
            "quantized_dir": f"{base}/quantized", "reports_dir": f"{base}/reports"}


def member_params(raw: dict, overrides: dict[str, Any], name: str, root: Path | None = None) -> Params:
    """A member's validated params: the project's, its overrides, its own output paths."""
    member = apply_overrides(raw, overrides, f"sweep member {name}")
    member.setdefault("paths", {}).update(member_paths(member.get("sweep", {}).get("out_dir", "reports/sweep"), name))
    # Each value alone was checked when params.yaml loaded; a combination can still clash
    # (distill.layer_map vs student.layers), and the error then names the member.
    return params_from_dict(member, f"sweep member {name} ({describe(overrides)})", root)


def describe(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "the project's params"


def dominates(a: dict, b: dict, objectives=OBJECTIVES) -> bool:
    """a is at least as good as b on every objective and strictly better on one."""
    better = False
    for key, direction in objectives:
        x, y = (a[key], b[key]) if direction == "max" else (b[key], a[key])  # x >= y means a is as good
        if x < y:
            return False
        better |= x > y
    return better


def pareto_front(points: list[dict], objectives=OBJECTIVES) -> list[int]:
    """Indices (in input order) of the points no other point dominates. Equal points are all kept."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, objectives) for j, q in enumerate(points) if j != i)]


def choose_smallest_passing(members: list[dict]) -> int | None:
    """Index of the smallest final model among those whose gate passed (ties: higher accuracy,
    then lower p50 latency, then member order); None when no member passed."""
    passing = [i for i, m in enumerate(members) if m.get("gate_passed")]
    if not passing:
        return None
    return min(passing, key=lambda i: (members[i]["size_mb"], -members[i]["accuracy"],
                                       members[i]["latency_p50_ms"], i))


TABLE_COLUMNS = ("member", "overrides", "accuracy", "macro_f1", "size_mb", "params", "latency_p50_ms",
                 "gate_passed", "pareto", "chosen", "error")


def table_markdown(rows: list[dict]) -> str:
    head = ("| member | overrides | accuracy | macro-F1 | size MB | params | p50 ms | gate | front | chosen |\n"
            "|---|---|--:|--:|--:|--:|--:|---|---|---|\n")

    def line(r: dict) -> str:
        if r.get("error"):
            return f"| {r['member']} | {r['overrides']} | failed: {r['error'][:200]} | | | | | | | |\n"
        return (f"| {r['member']} | {r['overrides']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                f"{r['size_mb']:.2f} | {r['params']:,} | {r['latency_p50_ms']:.2f} | "
                f"{'pass' if r['gate_passed'] else 'FAIL'} | {'yes' if r['pareto'] else ''} | "
                f"{'**yes**' if r['chosen'] else ''} |\n")

    return head + "".join(line(r) for r in rows)


def plot_front(rows: list[dict], path: Path) -> Path:
    """Accuracy against latency and against size; the front joined by a line, the chosen one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, (("latency_p50_ms", "batch-1 p50 latency (ms)"), ("size_mb", "size (MB)"))):
        for r in ok:
            ax.scatter(r[key], r["accuracy"], c="tab:blue" if r["gate_passed"] else "tab:gray",
                       marker="o" if r["pareto"] else "x", s=40)
            ax.annotate(r["member"], (r[key], r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((r for r in ok if r["pareto"]), key=lambda r: r[key])
        ax.plot([r[key] for r in front], [r["accuracy"] for r in front], "--", c="tab:orange", label="Pareto front")
        for r in ok:
            if r["chosen"]:
                ax.scatter(r[key], r["accuracy"], marker="*", s=250, c="tab:red", label="chosen")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
    fig.suptitle("Sweep: o on the front (accuracy, latency, size), x dominated; grey failed the gate")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
