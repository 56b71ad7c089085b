"""Choose a benchmark profile's knobs on a held-out split of its *train* file (never dev).

    python -m bench.select split --benchmark mrpc --data ../shared/data/mrpc --out /work/mrpc-select/data
    python -m bench.select run   --benchmark mrpc --split /work/mrpc-select/data --work /work/mrpc-select/work \\
        --teacher /work/bench-mrpc/models/teacher --name current --stages validate teacher soft_targets distill prune quantize
    python -m bench.select run ... --name light --set prune.head_fraction=0.125 --set prune.ffn_fraction=0.25 \\
        --stages prune quantize
    python -m bench.select table --work /work/mrpc-select/work

`split` writes a seeded split of train.tsv: `train.tsv` (the fit part, ~80%) and `dev.tsv` (the
held-out part, ~20%), header and lines copied byte for byte (GLUE's byte-order mark, bare quotes), so
the project's real loader reads them as it reads GLUE's files. `--group label` (MRPC's default)
stratifies it by label. SST-2's training rows are the phrases of parse trees: every sentence and the
phrases inside it. A split by row puts 86% of the held-out phrases word for word inside a fit phrase,
against 2 of the 872 dev sentences, so held-out scores there reward memorising and do not predict dev.
`--group contained` (SST-2's default) holds out whole trees: the texts that no other training text
contains (the roots, drawn by seed) with every text that occurs only inside held-out roots. Texts that
also occur inside a fit root stay in the fit part. `split.json` records, for any grouping, how many
held-out texts occur word for word inside a fit text (`held_out_inside_fit`; 0 with `contained`).
`--fit-rows N` keeps a seeded sample of N fit lines (a cheaper screening split; say so where its figures
are quoted).

`run` builds a bench-style project (bench/workdir.py: repo params.yaml < bench/<benchmark>.params.yaml
[< its tiny profile with --tiny] < --set) whose train is the fit part and whose eval is the held-out
part, on an already fine-tuned teacher (teacher.finetune false), then runs the named stages in order
(`distillery stage`, the commands dvc.yaml runs) and copies each stage's report to
`<work>/selection/<name>/`. Only the stages after distill need to run for a prune / quantize variant:
soft targets and the distilled student are shared by every variant, as with DVC.

`variants` runs the prune x quantize grid below after distill (each prune setting once, then each
quantize method on it), skipping what `<work>/selection/` already holds, so it resumes after an
interruption.

`table` prints every variant's held-out accuracy, positive-class F1, params and final ONNX size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.workdir import BENCHMARKS, build_params, make_work_project
from distillery.config import read_raw

# Selection-only settings: batch-1 latency timed on fewer held-out pairs (the machine is shared, so these
# latencies are not the benchmark's anyway; size and parameters decide the size / latency margins).
MEASURE = ["measure.latency_samples=50", "measure.warmup=5"]


def _runs(words: tuple[str, ...]):
    """Every contiguous run of words in a text, the whole text included."""
    for i in range(len(words)):
        for j in range(i + 1, len(words) + 1):
            yield words[i:j]


def contained_holdout(texts: list[str], held_out: float, rng: np.random.Generator) -> np.ndarray:
    """Held-out mask that keeps phrase trees whole (see `--group contained` above).

    A root is a text whose words occur as a contiguous run in no other training text. A share
    `held_out` of the distinct roots is drawn; a row is held out when every root containing its text is.
    """
    keys = [tuple(t.split()) for t in texts]
    distinct = set(keys)
    inner = set()
    for k in distinct:
        inner.update(r for r in _runs(k) if r != k)
    roots = sorted(k for k in distinct if k not in inner)
    drawn = np.zeros(len(roots), dtype=bool)
    drawn[rng.choice(len(roots), size=round(len(roots) * held_out), replace=False)] = True
    only_held: dict[tuple, bool] = {}
    for root, held in zip(roots, drawn):
        for r in set(_runs(root)):
            if r in distinct:
                only_held[r] = only_held.get(r, True) and bool(held)
    return np.array([only_held.get(k, False) for k in keys])


def inside_count(fit_texts: list[str], held_texts: list[str]) -> int:
    """How many held-out texts occur word for word (as a contiguous run) inside some fit text."""
    runs = set()
    for k in {tuple(t.split()) for t in fit_texts}:
        runs.update(_runs(k))
    return sum(tuple(t.split()) in runs for t in held_texts if t.split())


def split(data: Path, out: Path, held_out: float, seed: int, benchmark: str = "mrpc",
          fit_rows: int | None = None, group: str | None = None) -> dict:
    group = group or BENCHMARKS[benchmark].get("split_group", "label")
    if group not in ("label", "contained"):
        raise ValueError(f"split: unknown --group {group!r} (label or contained)")
    cols = read_raw(BENCHMARKS[benchmark]["profile"])["data"]
    header, *lines = (data / "train.tsv").read_bytes().splitlines(keepends=True)
    names = header.decode("utf-8-sig").rstrip("\r\n").split("\t")
    label_col, text_col = names.index(cols["label_column"]), names.index(cols["text_column"])
    fields = [ln.decode("utf-8").rstrip("\r\n").split("\t") for ln in lines]
    labels = np.array([f[label_col] for f in fields])
    texts = [f[text_col] for f in fields]
    rng = np.random.default_rng(seed)
    if group == "contained":
        hold = contained_holdout(texts, held_out, rng)
    else:
        hold = np.zeros(len(lines), dtype=bool)
        for value in sorted(set(labels)):
            idx = np.flatnonzero(labels == value)
            hold[rng.choice(idx, size=round(len(idx) * held_out), replace=False)] = True
    fit = ~hold
    if fit_rows is not None and fit_rows < fit.sum():
        keep = np.zeros(len(lines), dtype=bool)
        keep[np.sort(rng.choice(np.flatnonzero(fit), size=fit_rows, replace=False))] = True
        fit = keep
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.tsv").write_bytes(header + b"".join(ln for ln, f in zip(lines, fit) if f))
    (out / "dev.tsv").write_bytes(header + b"".join(ln for ln, h in zip(lines, hold) if h))
    info = {"source": str(data / "train.tsv"), "benchmark": benchmark, "seed": seed, "held_out_share": held_out,
            "group": group, "held_out_inside_fit": inside_count([t for t, f in zip(texts, fit) if f],
                                                                [t for t, h in zip(texts, hold) if h]),
            "fit_rows_asked": fit_rows, "fit_rows": int(fit.sum()), "held_out_rows": int(hold.sum()),
            "fit_labels": {v: int(((labels == v) & fit).sum()) for v in sorted(set(labels))},
            "held_out_labels": {v: int(((labels == v) & hold).sum()) for v in sorted(set(labels))}}
    (out / "split.json").write_text(json.dumps(info, indent=2))
    return info


def run(split_dir: Path, work: Path, teacher: str, name: str, sets: list[str], stages: list[str],
        benchmark: str = "mrpc", tiny: bool = False) -> None:
    # the teacher is fine-tuned already: no fold teachers can be made from it (teacher.cross_fit_folds)
    overrides = [f"teacher.model={teacher}", "teacher.finetune=false", "teacher.cross_fit_folds=0", *MEASURE, *sets]
    raw, _, _ = build_params(split_dir, False, overrides, benchmark=benchmark, tiny=tiny)
    title = BENCHMARKS[benchmark]["title"]
    make_work_project(work, raw, reuse=True, note=f"{title} selection project (fit / held-out split of train)")
    env = {**os.environ, "PREFECT_HOME": str(work / ".prefect")}
    dest = work / "selection" / name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "overrides.json").write_text(json.dumps({"benchmark": benchmark, "tiny": tiny, "overrides": overrides},
                                                    indent=2))
    for stage in stages:
        print(f"== {name}: stage {stage}", flush=True)
        subprocess.run([sys.executable, "-m", "distillery_cli", "stage", stage], cwd=work, env=env, check=True)
        report = work / "reports" / f"{stage}.json"
        if report.is_file():
            shutil.copy(report, dest / report.name)


PRUNE = {  # name -> overrides; "current" = bench/mrpc.params.yaml before the selection
    "current": [],
    "off": ["prune.head_fraction=0.0", "prune.ffn_fraction=0.0", "prune.recovery_epochs=0"],
    "light": ["prune.head_fraction=0.125", "prune.ffn_fraction=0.25"],
}
QUANTIZE = {
    "int8": ["quantize.method=onnx_dynamic_int8", "quantize.per_channel=true"],
    "int4emb": ["quantize.method=onnx_int4_embeddings", "quantize.per_channel=true"],
    "select": ["quantize.method=onnx_select"],
    "static": ["quantize.method=onnx_static_int8"],
}
# Grouped by prune setting, so each prune runs once (the first run's prune is current's).
ORDER = [("current", "int8"), ("current", "int4emb"), ("current", "select"), ("current", "static"),
         ("off", "int8"), ("off", "int4emb"), ("light", "int8"), ("light", "int4emb")]


def variants(split_dir: Path, work: Path, teacher: str, benchmark: str = "mrpc") -> None:
    """The grid in ORDER, on the distilled student already in `work` (run the stages up to distill first)."""
    sel = work / "selection"
    marker = sel / "pruned-with"  # which PRUNE setting models/pruned/ holds now
    first = sel / "current"  # the first run's own prune + quantize (the profile's settings) counts as current+int8
    if (first / "quantize.json").is_file() and not (sel / "current+int8").exists():
        for name, stage in (("current+int8", "quantize"), ("prune-current", "prune")):
            (sel / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(first / f"{stage}.json", sel / name / f"{stage}.json")
        marker.write_text("current")
    for p, q in ORDER:
        if (sel / f"{p}+{q}" / "quantize.json").is_file():
            continue
        if not marker.is_file() or marker.read_text() != p:
            run(split_dir, work, teacher, f"prune-{p}", PRUNE[p], ["prune"], benchmark)
            marker.write_text(p)
        run(split_dir, work, teacher, f"{p}+{q}", PRUNE[p] + QUANTIZE[q], ["quantize"], benchmark)


def positive_f1(report: dict) -> float:
    cm = np.asarray(report["confusion_matrix"], dtype=float)  # rows: true label, columns: predicted
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def table(work: Path) -> list[dict]:
    rows = []
    for d in sorted((work / "selection").iterdir()):
        if not d.is_dir():
            continue
        for stage in ("teacher", "distill", "prune", "quantize"):
            f = d / f"{stage}.json"
            wanted = ("quantize",) if "+" in d.name else ("prune",) if d.name.startswith("prune-") else (
                "teacher", "distill", "prune", "quantize")  # a variant run through every stage
            if f.is_file() and stage in wanted:
                r = json.loads(f.read_text())
                rows.append({"variant": d.name, "stage": stage, "accuracy": r["accuracy"], "f1_pos": positive_f1(r),
                             "params": r.get("params"), "size_mb": r.get("size_mb"),
                             "p50_ms": r.get("latency_p50_ms"),
                             "quantization": (r.get("selection") or {}).get("chosen") if stage == "quantize" else None})
    print(f"{'variant':28} {'stage':9} {'acc':>7} {'F1+':>7} {'params':>9} {'MB':>6} {'p50':>6}")
    for r in rows:
        print(f"{r['variant']:28} {r['stage']:9} {r['accuracy']:7.4f} {r['f1_pos']:7.4f} {r['params'] or 0:9,d} "
              f"{r['size_mb'] or 0:6.2f} {r['p50_ms'] or 0:6.2f}")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("--data", type=Path, required=True, help="the benchmark's data folder (train.tsv is split)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--held-out", type=float, default=0.2)
    s.add_argument("--fit-rows", type=int, default=None, help="a seeded sample of N fit lines (default: all)")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--group", choices=["label", "contained"], default=None,
                   help="label: stratified by label; contained: whole phrase trees (default: the benchmark's)")
    r = sub.add_parser("run")
    r.add_argument("--split", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--teacher", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--set", dest="sets", action="append", default=[])
    r.add_argument("--stages", nargs="+", required=True)
    r.add_argument("--tiny", action="store_true", help="merge the benchmark's tiny profile too")
    v = sub.add_parser("variants")
    v.add_argument("--split", type=Path, required=True)
    v.add_argument("--work", type=Path, required=True)
    v.add_argument("--teacher", required=True)
    t = sub.add_parser("table")
    t.add_argument("--work", type=Path, required=True)
    for p in (s, r, v):
        p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="mrpc")
    a = ap.parse_args(argv)
    if a.cmd == "split":
        print(json.dumps(split(a.data, a.out, a.held_out, a.seed, a.benchmark, a.fit_rows, a.group), indent=2))
    elif a.cmd == "run":
        run(a.split.resolve(), a.work.resolve(), a.teacher, a.name, a.sets, a.stages, a.benchmark, a.tiny)
    elif a.cmd == "variants":
        variants(a.split.resolve(), a.work.resolve(), a.teacher, a.benchmark)
    else:
        table(a.work)


if __name__ == "__main__":
    main()
