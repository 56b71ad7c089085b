"""Cost growth: each stage's wall time and peak RSS at growing training-set sizes, and how they grow.

    python -m bench.scale --data ../shared/data/sst2 [--rows 10000 40000 160000] [--set KEY=VALUE ...]

Per size N, a fresh bench project (bench/workdir.py, the SST-2 profile): min(N, 67,349) SST-2 training
rows; past that, teacher-labelled augmentation (`augment.copies`, Tang et al. 2019) with
`distill.max_train_rows` = N / (copies + 1), so the distillation set holds about N rows. Every stage
runs as `distillery stage NAME` (the command DVC runs), in order, in a fresh process: its wall time and
its own peak RSS (ru_maxrss from wait4, so neither this process nor another stage counts) are recorded.
soft_targets runs in-process (`soft_targets.workers: 0`) for the memory figures; at the largest size
(where a cluster's start-up cost is amortised, as it would be for a user who needs one) it runs again on
a 2-worker LocalCluster (1 torch thread each: `soft_targets.worker_threads` null shares `base.threads`)
for the speed-up; both timings are the whole stage command, the cluster's and Prefect server's start
included. The teacher fine-tune is capped by the profile
(`teacher.max_train_rows`), so its time should not grow. Fits: time ~ rows^k (least squares in log-log)
and RSS(largest) / RSS(smallest) per stage. Targets (issue 18): k <= 1.1, RSS ratio <= 1.5, speed-up
>= 1.6. Writes bench/results/<date>-scale.{json,md,png}, with the command, the machine, the commit and other
processes' CPU share per size. Hours on 2 cores at the default sizes with the SST-2 profile's epochs;
`--set distill.epochs=1 --set teacher.max_train_rows=10000` keeps it under an hour (a constant
factor on distill / prune time: the exponents do not depend on it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.compare import OtherCpu
from bench.run import machine, versions
from bench.workdir import build_params, make_work_project, prepare_data
from distillery.config import PARAMS_FILE
from distillery.lineage import git_lineage
from tasks.graph import stage_names

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"k": 1.1, "rss_ratio": 1.5, "speedup": 1.6}


def size_params(raw: dict, bench: dict, rows: int, available: int) -> None:
    """Point the bench params at about `rows` distillation rows: SST-2 first, then augmentation."""
    real = min(rows, available)
    copies = math.ceil(rows / real) - 1
    bench["train_rows"] = real if real < available else None
    raw["augment"]["copies"] = copies
    raw["distill"]["max_train_rows"] = rows // (copies + 1) if copies else real
    raw.setdefault("soft_targets", {})["workers"] = 0


SPEEDUP_RUNS = (  # name, soft_targets settings: the same chunks scored three ways, side by side
    ("one_process", {"workers": 0, "worker_threads": None}),        # the default: base.threads in the stage
    ("dask_2_workers", {"workers": 2, "worker_threads": None}),     # base.threads shared: 1 thread each
    ("dask_1_worker_1_thread", {"workers": 1, "worker_threads": 1}),  # one core's worth, on the same engine
)


def measure_speedup(work: Path, log) -> dict:
    """soft_targets at one size, run three ways in a row (each from an empty chunk cache): the whole
    stage command's wall time, and its time scoring chunks (the report's `logits_seconds`, which
    holds the Prefect server's and cluster's start)."""
    import yaml

    params_file = work / PARAMS_FILE
    original = params_file.read_text()
    params = yaml.safe_load(original)
    out: dict = {}
    try:
        for name, settings in SPEEDUP_RUNS:
            params["soft_targets"].update(settings)
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            shutil.rmtree(work / params["paths"]["logits_dir"], ignore_errors=True)
            with OtherCpu() as busy:
                run = run_stage(work, "soft_targets", log)
            report = soft_targets_report(work)
            out[name] = {**run, "logits_seconds": report["logits_seconds"], "other_cpu_share": busy.share}
            print(json.dumps({"speedup_run": name, **out[name]}), flush=True)
    finally:
        params_file.write_text(original)
    rows = report.get("rows")
    one, two, single = (out[n]["seconds"] for n, _ in SPEEDUP_RUNS)
    return {"rows": rows, "runs": out, "one_process_s": one, "dask_s": two, "speedup": one / two,
            "dask_scaling_1_to_2_workers": single / two}


def run_stage(work: Path, stage: str, log) -> dict:
    """One stage in a fresh process: wall seconds and that process's peak RSS (MB = 10^6 bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "distillery_cli", "--project-dir", str(work), "stage", stage],
                            stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed in {work} (exit {proc.returncode}); see {log.name}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6}


def growth(rows: list[int], values: list[float]) -> float:
    """k in value ~ rows^k, least squares on log-log."""
    return float(np.polyfit(np.log(rows), np.log(values), 1)[0])


def measured_stages(work: Path) -> list[str]:
    """The project's stages (dvc.yaml, through tasks.graph) whose cost grows with the data: all but
    demo_data, which the bench's own data replaces."""
    return [s for s in stage_names(work) if s != "demo_data"]


def summarize(results: dict[int, dict[str, dict]], actual: dict[int, int] | None = None) -> dict[str, dict]:
    """k per stage, fitted on the distillation set's real size where known (`actual`: the soft_targets
    report's rows; augmentation skips copies it cannot perturb, so past SST-2's rows it is below the
    size asked for), and the RSS ratio largest / smallest."""
    sizes = sorted(results)
    x = [actual[n] if actual and actual.get(n) else n for n in sizes]
    out = {}
    for stage in results[sizes[0]]:
        secs = [results[n][stage]["seconds"] for n in sizes]
        rss = [results[n][stage]["peak_rss_mb"] for n in sizes]
        out[stage] = {"k": growth(x, secs), "rss_ratio": rss[-1] / rss[0]}
    return out


def soft_targets_report(work: Path) -> dict | None:
    """A bench project's soft_targets report (in its params' reports_dir), or None before the stage ran."""
    import yaml

    reports = yaml.safe_load((work / PARAMS_FILE).read_text())["paths"]["reports_dir"]
    path = work / reports / "soft_targets.json"
    return json.loads(path.read_text()) if path.is_file() else None


def distill_rows(work: Path) -> int | None:
    """The distillation set's rows of a bench project, or None."""
    return (soft_targets_report(work) or {}).get("rows")


def write_results(path: Path, saved: dict) -> str:
    """The run's json, md and png (`path` is the json's; the others sit beside it); returns the markdown."""
    results = {int(k): v for k, v in saved["results"].items()}
    path.write_text(json.dumps(saved, indent=2, default=str) + "\n")
    text = markdown(results, saved["fits"], saved.get("speedup"), saved)
    if (saved.get("speedup") or {}).get("command"):
        text += (f"\nThe speed-up was measured again by `{saved['speedup']['command']}` at commit "
                 f"`{saved['speedup']['commit'][:12]}`.\n")
    path.with_suffix(".md").write_text(text)
    plot(results, path.with_suffix(".png"), saved.get("distill_rows"))
    return text


def markdown(results: dict, fits: dict, speedup: dict | None, meta: dict | None = None) -> str:
    sizes = sorted(results)
    actual = {int(k): v for k, v in ((meta or {}).get("distill_rows") or {}).items()}
    head = "| stage | " + " | ".join(f"{n:,} rows" + (f" ({actual[n]:,} distilled)" if actual.get(n, n) != n else "")
                                    + ": s / MB" for n in sizes) + " | k (time ~ rows^k) | RSS ratio |\n"
    head += "|---" * (len(sizes) + 3) + "|\n"
    rows = "".join(f"| {s} | " + " | ".join(f"{results[n][s]['seconds']:.1f} / {results[n][s]['peak_rss_mb']:.0f}"
                                           for n in sizes)
                   + f" | {fits[s]['k']:.2f} | {fits[s]['rss_ratio']:.2f} |\n" for s in fits)
    meta = meta or {}
    intro = ""
    if meta.get("command"):
        intro = f"Produced by `{meta['command']}`"
        if meta.get("commit"):
            intro += f" at commit `{meta['commit'][:12]}`"
        intro += ".\n"
    if meta.get("other_cpu_share"):
        intro += "Other processes' share of the CPU per size: " + ", ".join(
            f"{int(n):,} rows {v:.1%}" for n, v in meta["other_cpu_share"].items()) + ".\n"
    text = f"# Cost growth, {dt.date.today()}\n\n{intro}\n{head}{rows}\nTargets: k <= {TARGETS['k']}, RSS ratio <= " \
           f"{TARGETS['rss_ratio']}, soft_targets speed-up on 2 workers >= {TARGETS['speedup']}.\n"
    if speedup:
        text += (f"\nsoft_targets at the largest size ({speedup['rows']:,} distillation rows), run three ways in a "
                 "row from an empty chunk cache (stage wall s; of which scoring chunks, servers' and cluster's "
                 "start included):\n\n| run | stage s | scoring s | other processes' CPU |\n|---|--:|--:|--:|\n")
        for name, run in speedup.get("runs", {}).items():
            share = run.get("other_cpu_share")
            text += (f"| {name.replace('_', ' ')} | {run['seconds']:.1f} | {run.get('logits_seconds', float('nan')):.1f} | "
                     f"{'' if share is None else f'{share:.1%}'} |\n")
        text += (f"\nSpeed-up of a 2-worker LocalCluster over one process: **{speedup['speedup']:.2f}x**"
                 + (f"; the cluster from 1 worker (1 thread) to 2: {speedup['dask_scaling_1_to_2_workers']:.2f}x"
                    if speedup.get("dask_scaling_1_to_2_workers") else "") + "\n")
    return text


def plot(results: dict, path: Path, actual: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    x = [(actual or {}).get(str(n)) or n for n in sizes]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in results[sizes[0]]:
        a.plot(x, [results[n][stage]["seconds"] for n in sizes], marker="o", label=stage)
        b.plot(x, [results[n][stage]["peak_rss_mb"] for n in sizes], marker="o", label=stage)
    for ax, label in ((a, "wall time (s)"), (b, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("distillation rows")
        ax.set_ylabel(label)
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def rerun_speedup(results_json: Path, work_dir: Path, argv: list[str] | None, speedup: bool = True) -> int:
    """Rewrite an earlier run's json / md / png: its speed-up measured again (`speedup`), its fits on
    the distillation sets' real sizes (read from its projects under `work_dir`)."""
    saved = json.loads(results_json.read_text())
    results = {int(k): v for k, v in saved["results"].items()}
    if speedup:
        rows = max(results)
        with (work_dir / f"rows-{rows}.log").open("a") as log:
            saved["speedup"] = measure_speedup(work_dir / f"rows-{rows}", log)
        saved["speedup"]["command"] = "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
        saved["speedup"]["commit"] = git_lineage(REPO)["git_commit"]
    saved["distill_rows"] = {str(n): distill_rows(work_dir / f"rows-{n}") or (saved.get("distill_rows") or {}).get(str(n))
                             for n in results}
    saved["fits"] = summarize(results, {int(k): v for k, v in saved["distill_rows"].items()})
    print(write_results(results_json, saved))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="folder with SST-2's train.tsv and dev.tsv")
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    ap.add_argument("--work-dir", type=Path, default=REPO / "bench" / "work" / "scale")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    ap.add_argument("--no-speedup", action="store_true", help="skip the soft_targets speed-up runs")
    ap.add_argument("--speedup-only", type=Path, metavar="RESULTS_JSON",
                    help="rerun only the speed-up, on the largest size's project of an earlier run (its results "
                         "JSON, whose work dir is --work-dir), and rewrite that run's json / md")
    ap.add_argument("--refit", type=Path, metavar="RESULTS_JSON",
                    help="only refit and rewrite an earlier run's json / md / png (its projects under --work-dir)")
    args = ap.parse_args(argv)
    if args.speedup_only or args.refit:
        return rerun_speedup(args.speedup_only or args.refit, args.work_dir, argv, speedup=bool(args.speedup_only))
    if len(args.rows) < 2:
        ap.error("--rows: at least two sizes, to fit a growth")
    available = sum(1 for _ in (args.data / "train.tsv").open("rb")) - 1
    results: dict[int, dict] = {}
    speedup = None
    other: dict[int, float | None] = {}
    actual: dict[int, int | None] = {}
    meta = {"command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine(), "versions": versions(), "git": git_lineage(REPO)}
    meta["commit"] = meta["git"]["git_commit"]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(sorted(args.rows)):
        raw, bench, _ = build_params(args.data.resolve(), False, args.set)
        size_params(raw, bench, rows, available)
        work = args.work_dir / f"rows-{rows}"
        prepare_data(raw, bench, args.work_dir / f"rows-{rows}-data")
        make_work_project(work, raw, reuse=False, note=f"scale bench {rows} rows")
        with (args.work_dir / f"rows-{rows}.log").open("w") as log, OtherCpu() as busy:
            results[rows] = {s: run_stage(work, s, log) for s in measured_stages(work)}
            print(json.dumps({"rows": rows, **results[rows]}), flush=True)
        actual[rows] = distill_rows(work)
        other[rows] = busy.share
        if i == len(args.rows) - 1 and not args.no_speedup:  # the Dask path, where its start-up is amortised
            with (args.work_dir / f"rows-{rows}.log").open("a") as log:
                speedup = measure_speedup(work, log)
    meta["other_cpu_share"] = {str(k): v for k, v in other.items()}
    meta["distill_rows"] = {str(k): v for k, v in actual.items()}
    saved = {"results": {str(k): v for k, v in results.items()}, "fits": summarize(results, actual),
             "speedup": speedup, "targets": TARGETS, **meta}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(write_results(args.out_dir / f"{dt.date.today()}-scale.json", saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
