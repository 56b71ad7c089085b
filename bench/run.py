"""`distillery bench`: the pipeline on SST-2, then every model measured side by side, then the report.

1. A fresh bench project (bench/workdir.py) with the benchmark profile; the real Prefect flow
   runs in it (timed); then a no-change rerun in a fresh process (bench/pipeline_timing.py).
   Where the benchmark has a tiny profile (SST-2), a second project runs it the same way, on the
   first project's fine-tuned teacher and soft-target chunks (bench/tiny.py): row E-tiny.
2. The competitors, built with the pipeline's own code (bench/baselines.py): B, C, D, D-int8.
3. A, B, C, D, D-int8, E-distill, E-prune, E-quantize (and E-tiny) measured in this process under
   the same conditions (bench/compare.py), then peak memory, one fresh process per model (bench/memory.py).
4. bench/results/<date>-sst2.json (every raw figure, machine, versions, git commit), the markdown
   report and two plots (bench/report.py); with --update-readme, the README's benchmark section.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import report
from bench.workdir import BENCHMARKS, REPO, build_params, file_sha256, make_work_project, prepare_data
from distillery.env import configure_environment

PACKAGES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "numpy", "mlflow", "prefect", "dvc",
            "great-expectations", "matplotlib")


def machine() -> dict:
    def read(path):
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    mem = next((int(line.split()[1]) for line in read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:")), 0)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_model": cpu,
            "cpu_count": os.cpu_count(), "cpus_available": available, "ram_gb": mem / 1e6,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@contextlib.contextmanager
def bench_environment(work: Path):
    """Offline, no telemetry, Prefect state inside the bench project; restored afterwards."""
    saved = dict(os.environ)
    configure_environment(work)
    os.environ["PREFECT_HOME"] = str(work / ".prefect")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build_competitors(ctx, base_dir: Path) -> tuple[dict[str, Path], dict]:
    """B, C, D and D-int8 from the pipeline's teacher; returns their directories and build figures."""
    from bench.baselines import train_hard_label_student, write_onnx_int8_dir
    from bench.torch_int8 import quantize_torch_dynamic, save_torch_int8
    from distillery.modeling import load_model_dir

    teacher_dir = ctx.path(ctx.params.paths.teacher_dir)
    dirs = {k: base_dir / name for k, name in (("B", "B-teacher-ort-int8"), ("C", "C-teacher-torch-int8"),
                                                ("D", "D-student-hard-labels"), ("D-int8", "D-student-ort-int8"))}
    teacher, tokenizer, _, _ = load_model_dir(teacher_dir)
    built = {"B": write_onnx_int8_dir(teacher, tokenizer, teacher_dir, dirs["B"], ctx)}
    save_torch_int8(quantize_torch_dynamic(teacher), dirs["C"])
    del teacher
    print("bench: training baseline D (hard labels, no teacher)")
    built["D"] = train_hard_label_student(ctx, dirs["D"])
    student, tokenizer, _, _ = load_model_dir(dirs["D"])
    built["D-int8"] = write_onnx_int8_dir(student, tokenizer, dirs["D"], dirs["D-int8"], ctx)
    return dirs, built


def model_specs(ctx, dirs: dict[str, Path], extra: tuple = ()) -> list:
    """The rows A to E-quantize, then `extra` (E-tiny), in the order they are measured. An int8
    model counts the parameters of the fp32 model it was made from (the same weights, stored as int8)."""
    from bench.compare import ModelSpec
    from bench.torch_int8 import TORCH_INT8_FILE
    from distillery.modeling import count_parameters, load_model_dir

    paths = ctx.params.paths

    def n_params(d):
        return count_parameters(load_model_dir(d)[0])

    teacher, student, pruned = (ctx.path(x) for x in (paths.teacher_dir, paths.student_dir, paths.pruned_dir))
    nt, nd, npr = n_params(teacher), n_params(dirs["D"]), n_params(pruned)
    return [
        ModelSpec("A", "A: teacher fp32", "teacher, fp32, PyTorch", "torch", teacher, nt),
        ModelSpec("B", "B: teacher ORT int8", "teacher, ONNX Runtime dynamic int8", "onnx", dirs["B"], nt),
        ModelSpec("C", "C: teacher torch int8", "teacher, torch quantize_dynamic int8", "torch-dynamic-int8",
                  teacher, nt, size_file=dirs["C"] / TORCH_INT8_FILE),
        ModelSpec("D", "D: hard-label student", "our student's shape, hard labels only, fp32", "torch", dirs["D"], nd),
        ModelSpec("D-int8", "D-int8: D, ORT int8", "D through ONNX Runtime int8", "onnx", dirs["D-int8"], nd),
        ModelSpec("E-distill", "E-distill: ours, fp32", "ours after distill, fp32", "torch", student, n_params(student)),
        ModelSpec("E-prune", "E-prune: ours pruned, fp32", "ours after prune, fp32", "torch", pruned, npr),
        ModelSpec("E-quantize", "E-quantize: ours, int8 (final)", "ours after quantize, ONNX int8 (final)", "onnx",
                  ctx.path(paths.quantized_dir), npr),
        *extra,
    ]


def run_pipeline(work: Path) -> tuple[dict, dict, dict, float | None]:
    """The first run (in this process) and the no-change rerun (a fresh process), timed."""
    from bench import compare, pipeline_timing

    print(f"bench: running the pipeline in {work}")
    with compare.OtherCpu() as other:
        first = pipeline_timing.run_first(work)
    walls = pipeline_timing.task_walls(first["flow_run_id"], list(first["ran"]))
    print("bench: no-change rerun (fresh process)")
    rerun = pipeline_timing.rerun_unchanged(work, work / "logs" / "rerun.log")
    return first, walls, rerun, other.share


def run_tiny(work: Path, ctx, main_raw: dict, data_dir: Path, *, quick: bool, overrides: list[str],
             tiny_overrides: list[str], benchmark: str, reuse: bool, note: str) -> tuple[dict, object]:
    """The tiny profile's project beside `work`, run through the real flow (timed) on the main
    project's teacher; returns its figures and its model spec (row E-tiny)."""
    from bench import pipeline_timing, tiny
    from bench.compare import ModelSpec
    from distillery.config import params_from_dict
    from distillery.modeling import count_parameters, load_model_dir
    from tasks.common import read_json, report_path

    p = ctx.params
    raw = tiny.build_tiny_params(data_dir, quick, overrides, tiny_overrides, benchmark, main_raw,
                                 ctx.path(p.paths.teacher_dir))
    twork = tiny.tiny_work_dir(work)
    fresh = make_work_project(twork, raw, reuse=reuse, note=note)
    tp = params_from_dict(raw, str(twork / "params.yaml"))
    seeded = tiny.seed_soft_target_chunks(work, p, twork, tp) if fresh else 0
    print(f"bench: running the tiny profile in {twork} (teacher {raw['teacher']['model']}, "
          f"{seeded} soft-target chunk(s) linked)")
    with bench_environment(twork):
        first = pipeline_timing.run_first(twork)
        walls = pipeline_timing.task_walls(first["flow_run_id"], list(first["ran"]))
    reports = {s: read_json(report_path(twork, tp, s)) for s in first["ran"] if report_path(twork, tp, s).exists()}
    main_soft = report_path(work, p, "soft_targets")
    main_md5 = (read_json(main_soft).get("teachers") or [{}])[0].get("md5") if main_soft.exists() else None
    profile = BENCHMARKS[benchmark]["tiny"].relative_to(REPO).as_posix()
    figures = {"profile": profile, "work_dir": str(twork), "teacher_dir": raw["teacher"]["model"],
               "fresh_project": fresh, **tiny.tiny_figures(first, walls, reports, seeded, main_md5),
               "params": {"tiny_overrides": tiny_overrides, "effective": tp.as_dict()}}
    pruned, final = twork / tp.paths.pruned_dir, twork / tp.paths.quantized_dir
    variant = figures["quantize"]["variant"] or tp.quantize.method.removeprefix("onnx_")
    spec = ModelSpec(tiny.TINY_KEY, f"{tiny.TINY_KEY}: tiny profile, {variant}",
                     f"tiny profile ({tp.student.architecture} student), ONNX {variant}", "onnx", final,
                     count_parameters(load_model_dir(pruned)[0]))
    return figures, spec


def measure_models(ctx, work: Path, extra: tuple = ()) -> tuple[list, dict, dict, dict]:
    """Build the competitors, then time every model (and `extra`) in this process and probe its memory."""
    from bench import compare
    from tasks.models import load_splits

    dirs, built = build_competitors(ctx, work / "baselines")
    specs = model_specs(ctx, dirs, extra)
    train_set, eval_set, labels = load_splits(ctx)
    texts = eval_set.inputs  # sentences, or (sentence, sentence) pairs at their real lengths
    rows = compare.measure_all(specs, texts, eval_set.labels, len(labels), ctx.params)
    if "1" in labels:  # a binary task with a positive class (MRPC): GLUE reports its F1
        for row in rows.values():
            row["f1_positive"] = report.positive_f1(row["confusion_matrix"], labels.index("1"))
    texts_file = compare.write_texts(texts, work / "baselines" / "eval_texts.json")
    for spec in specs:
        memory = compare.measure_memory(spec, texts_file, ctx.params)
        rows[spec.key].update(memory=memory, peak_rss_mb=memory["peak_rss_mb"], label=spec.label, what=spec.what,
                              runtime=spec.kind, model_dir=str(spec.model_dir),
                              weights_file=str(spec.size_file) if spec.size_file else None)
    sizes = {"train_rows": len(train_set), "eval_rows": len(texts)}
    g = ctx.params.gate  # the pipeline's own interval settings
    paired = report.paired_intervals(rows, eval_set.labels, confidence=g.confidence,
                                     resamples=g.bootstrap_resamples, seed=ctx.params.base.seed)
    return specs, rows, built, {**sizes, "paired": paired}


def run_benchmark(data_dir: str | Path, *, quick: bool = False, overrides: list[str] | None = None,
                  work_dir: str | Path | None = None, out_dir: str | Path | None = None, reuse_work: bool = False,
                  update_readme: bool = False, command: str = "distillery bench", benchmark: str = "sst2",
                  tiny_overrides: list[str] | None = None) -> dict:
    """Run the whole benchmark; returns the results dict (also written to `out_dir`).
    `tiny_overrides`: KEY=VALUE items for the tiny profile's project only (bench/tiny.py)."""
    from bench import pipeline_timing
    from bench.tiny import has_tiny
    from distillery.lineage import git_lineage
    from tasks.common import read_json, report_path, stage_context

    data_dir = Path(data_dir).resolve()
    work = Path(work_dir or REPO / "bench" / "work" / (f"{benchmark}-quick" if quick else benchmark)).resolve()
    out = Path(out_dir or (REPO / "bench" / "work" / "quick-results" if quick else REPO / "bench" / "results"))
    if update_readme:
        readme_links(out)  # refused now, not after the whole benchmark has run
    now = dt.datetime.now().astimezone()
    results = {"benchmark": benchmark, "title": BENCHMARKS[benchmark]["title"], "mode": "quick" if quick else "full", "date": now.strftime("%Y-%m-%d"),
               "started_at": now.isoformat(timespec="seconds"), "command": command, "machine": machine(),
               "versions": versions(), "git": git_lineage(REPO)}
    raw, bench_cfg, _ = build_params(data_dir, quick, overrides or [], benchmark)
    prepare_data(raw, bench_cfg, work.parent / f"{work.name}-data")
    fresh = make_work_project(work, raw, reuse=reuse_work,
                              note=f"bench project for distillery {results['git']['git_commit']}")
    with bench_environment(work):
        first, walls, rerun, other_share = run_pipeline(work)
        ctx = stage_context(work)  # the bench project's params; seeds; torch threads
        tiny, extra = None, ()
        if has_tiny(benchmark):
            # A teacher trained again in this run makes the tiny project's copy stale: DVC cannot see it
            # (teacher.model is a param there, not a dep), so the tiny project then starts fresh.
            reuse_tiny = reuse_work and not first["ran"].get("teacher", True)
            tiny, spec = run_tiny(work, ctx, raw, data_dir, quick=quick, overrides=overrides or [],
                                  tiny_overrides=tiny_overrides or [], benchmark=benchmark, reuse=reuse_tiny,
                                  note=f"tiny bench project for distillery {results['git']['git_commit']}")
            extra = (spec,)
            ctx = stage_context(work)
        specs, rows, built, sizes = measure_models(ctx, work, extra)
    paired = sizes.pop("paired")
    p = ctx.params
    reports = {s: read_json(report_path(work, p, s)) for s in first["ran"] if report_path(work, p, s).exists()}
    pipeline = pipeline_timing.pipeline_figures(first, walls, reports,
                                                {k: r["measure_seconds"] for k, r in rows.items()}, rerun)
    pipeline.update(fresh_project=fresh, other_cpu_share=other_share)
    results.update(
        data={"dir": str(data_dir), "train_path": p.data.train_path, "eval_path": p.data.eval_path, **sizes,
              "bench": bench_cfg, "source_sha256": {n: file_sha256(data_dir / n) for n in ("train.tsv", "dev.tsv")}},
        params={"profiles": [f"bench/{benchmark}.params.yaml"] + ([f"bench/{benchmark}-quick.params.yaml"] if quick else []),
                "overrides": overrides or [], "effective": p.as_dict()},
        tiny=tiny,
        conditions={"threads": p.base.threads, "device": p.base.device, "warmup": p.measure.warmup,
                    "latency": f"batch 1, every eval item ({BENCHMARKS[benchmark]['eval_unit']}) in file order, "
                               "real length, tokenization included",
                    "throughput_batch_size": p.measure.throughput_batch_size, "order": [s.key for s in specs],
                    "memory": "fresh process per model; peak RSS (VmHWM reset after load) while scoring every "
                              "eval sentence at the throughput batch size; see bench/memory.py"},
        work_dir=str(work), models=rows, built=built, ratios=report.all_ratios(rows), paired=paired,
        pipeline=pipeline)
    results["targets"] = report.evaluate_targets(rows, pipeline, benchmark)
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_outputs(results, out, update_readme)
    return results


def readme_links(out: Path) -> str:
    """`out` as the README links it (relative to the repository); refused when outside it."""
    try:
        return out.resolve().relative_to(REPO).as_posix()
    except ValueError:
        raise SystemExit(f"--update-readme: {out} is outside the repository; the README cannot show it "
                         "(drop --out-dir, or give one inside the repository)") from None


def write_outputs(results: dict, out: Path, update_readme: bool) -> dict[str, Path]:
    stem = f"{results['date']}-{results['benchmark']}" + ("-quick" if results["mode"] == "quick" else "")
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md",
             "latency": out / f"{stem}-accuracy-latency.png", "size": out / f"{stem}-accuracy-size.png"}
    results["json_name"] = files["json"].name
    results["files"] = {k: str(v) for k, v in files.items()}
    report.plot(results, "latency_p50_ms", "batch-1 latency p50 (ms, log scale)", files["latency"])
    report.plot(results, "size_mb", "size on disk (MB, log scale)", files["size"])
    files["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    files["markdown"].write_text(report.markdown(results, {k: files[k].name for k in ("json", "latency", "size")}))
    print(f"bench: wrote {files['json']}, {files['markdown'].name} and two plots")
    if update_readme:
        readme = REPO / "README.md"
        base = readme_links(out)
        rel = {k: f"{base}/{files[k].name}" for k in ("json", "latency", "size")}
        if report.update_readme(readme, report.markdown(results, rel), results["benchmark"]):
            print(f"bench: updated the benchmark section of {readme}")
        else:
            print(f"bench: {readme} has no {report.README_START} marker; not updated", file=sys.stderr)
    return files


def from_cli(args) -> int:
    """Entry point for `distillery bench` (the parser lives in distillery_cli/cli.py)."""
    command = "distillery " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "distillery bench"
    name = getattr(args, "benchmark", "sst2")
    data = args.data or REPO.parent / "shared" / "data" / BENCHMARKS[name]["data"]  # beside the checkout
    results = run_benchmark(data, quick=args.quick, overrides=args.set or [], work_dir=args.work_dir,
                            out_dir=args.out_dir, reuse_work=args.reuse_work, update_readme=args.update_readme,
                            command=command, benchmark=name)
    missed = [t["target"] for t in results["targets"] if t["met"] is False]
    print(f"bench: {len(results['targets']) - len(missed)}/{len(results['targets'])} targets met"
          + (f"; not met: {'; '.join(missed)}" if missed else ""))
    return 0
