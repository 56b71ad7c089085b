"""`distillery` command line: run the pipeline, run one stage (what dvc.yaml calls), show status.

Heavy libraries (torch, prefect, mlflow, dvc) are imported inside the commands that
need them, so `distillery --help` and config errors answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path

from distillery.config import PARAMS_FILE, ConfigError, load_params, params_from_dict, params_text_with, read_raw
from distillery.env import IN_FLOW_ENV, configure_environment
from distillery.errors import user_error_types
from distillery.fileio import write_atomically
from flows.prefect_api import own_prefect_api, quiet_user_errors_on_console


def prepare_params(root: Path, params_file: str | None, overrides: list[str]) -> None:
    """Validate the params to run with and make them the project's params.yaml (which DVC tracks).

    Like `dvc exp run --set-param`, overrides are written into params.yaml (comments kept),
    so `dvc repro` and the run agree on what was run: the text validated is the text written.
    """
    import yaml

    target = root / PARAMS_FILE
    source = Path(params_file) if params_file else target
    raw = read_raw(source)  # a missing, empty or unreadable file: an error that names it
    text = params_text_with(source, overrides) if overrides else None
    params_from_dict(yaml.safe_load(text) if text else raw, str(source), root)  # fails here, before anything is touched
    copied = source.resolve() != target.resolve()
    # a kill mid-write must not truncate the user's params
    if text is not None:
        write_atomically(target, lambda tmp: tmp.write_text(text))
    elif copied:
        write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))
    if copied:
        print(f"params: using {source} (copied to {target.name}, which DVC tracks)")
    if overrides:
        print(f"params: {', '.join(overrides)} written to {target.name}")


def cmd_run(args) -> int:
    if args.new_task and not args.reason:
        raise ConfigError("--new-task needs --reason \"...\": replacing a champion of another task is "
                          "recorded with why")
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    prepare_params(root, args.params, args.set or [])
    from flows.pipeline import pipeline

    quiet_user_errors_on_console()
    with own_prefect_api():
        result = pipeline(project_dir=str(root), new_task_reason=args.reason if args.new_task else None)
    from distillery.report import print_run_summary

    print_run_summary(result)
    return 0


def cmd_pull(args) -> int:
    """A fresh clone gets every stage output of dvc.lock from the remote: `distillery run` then trains nothing."""
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    from tasks.storage import pull_outputs

    got = pull_outputs(root, args.remote or load_params(root / PARAMS_FILE, check_files=False).remote.name)
    print(f"dvc pull: {got['fetched']} file(s) fetched from remote {got['remote']!r} ({got['url']}); "
          f"{got['added']} added, {got['modified']} modified in the workspace")
    return 0


def cmd_sweep(args) -> int:
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    params = load_params(root / PARAMS_FILE)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    from flows.sweep import sweep, task_runner

    quiet_user_errors_on_console()
    runner = task_runner(args.workers or params.sweep.workers, args.address)
    with own_prefect_api():
        summary = sweep.with_options(task_runner=runner)(project_dir=str(root))
    return 0 if summary["chosen"] else 1


def cmd_stage(args) -> int:
    """One DVC stage (dvc.yaml calls this). Expected errors are saved for the flow to report."""
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    import importlib

    from tasks.common import remove_stage_leftovers, stage_context
    from tasks.graph import stage_graph

    err_file = None
    try:
        params = load_params(root / PARAMS_FILE)
        graph = stage_graph(root)  # dvc.yaml, the one declaration of the stages
        if args.name not in graph:
            raise ConfigError(f"dvc.yaml: no stage {args.name!r} (its stages: {', '.join(graph)})")
        err_file = root / params.paths.reports_dir / "errors" / f"{args.name}.txt"
        err_file.unlink(missing_ok=True)
        module = importlib.import_module(graph[args.name].module)
        for p in remove_stage_leftovers(root, [*graph[args.name].outs, *graph[args.name].metrics]):
            print(f"{args.name}: removed {p.relative_to(root)}, left by an interrupted run")
        ctx = stage_context(root, uses_torch=getattr(module, "USES_TORCH", True))
        st = params.soft_targets
        if args.name == "soft_targets" and (st.workers or st.address):  # its chunks as tasks on Dask
            from flows.soft_targets import dask_compute

            module.run(ctx, compute=dask_compute(st, own_prefect_api))
        else:
            module.run(ctx)
        return 0
    except BaseException as exc:
        from distillery.interrupts import Interrupted

        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            raise  # not an error of the stage: main() says so and exits 143 / 130
        expected = isinstance(exc, user_error_types())
        message = str(exc) if expected else traceback.format_exc()
        if err_file is not None:
            write_atomically(err_file, lambda tmp: tmp.write_text(f"{message}\n"))
        if expected and os.environ.get(IN_FLOW_ENV) == "1":
            return 1  # the flow reports the saved message once, as its own error
        raise


def cmd_status(args) -> int:
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    params = load_params(root / PARAMS_FILE, check_files=False)
    from distillery.report import print_status
    from tasks import tracking
    from tasks.common import read_json, report_path
    from tasks.promotion import history
    from tasks.register import PROMOTION_REPORT, recover_if_idle, registry_status

    client = tracking.client_for(root, params)
    recovered = recover_if_idle(client, params.register.model_name)
    if recovered is None:
        print("status: a registration is in progress (registry lock held); pending versions left to it")
    status = registry_status(client, params.register.model_name)
    status["history"] = history(client, params.register.model_name)
    # The register step's record holds the full decision (thresholds + champion comparison); before
    # any registration only the evaluate stage's threshold checks exist.
    promotion_file, gate_file = report_path(root, params, PROMOTION_REPORT), report_path(root, params, "gate")
    if promotion_file.exists():
        status["last_decision"] = read_json(promotion_file)
    elif gate_file.exists():
        status["last_decision"] = {"decision": read_json(gate_file)}
    print_status(status)
    return 0


def cmd_bench(args) -> int:
    """The SST-2 benchmark (bench/run.py). It lives beside the package in a source checkout."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "bench" / "run.py").is_file():
        raise ConfigError("distillery bench needs a source checkout (bench/ beside distillery/)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from bench.run import from_cli

    return from_cli(args)


def _registry(args):
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    params = load_params(root / PARAMS_FILE, check_files=False)
    from tasks import tracking

    return root, params, tracking.client_for(root, params)


def cmd_promote(args) -> int:
    root, params, client = _registry(args)
    from tasks.promotion import PromotionError, promote

    if args.require_shadow is not None:
        from distillery.serving.server import DEFAULT_LOG
        from distillery.serving.shadow_report import shadow_report

        report = shadow_report(Path(args.log or root / DEFAULT_LOG), shadow_version=args.version,
                               max_regression=params.gate.max_regression)
        if args.require_shadow < 1:
            raise ConfigError(f"--require-shadow must be >= 1, got {args.require_shadow}")
        if report["labelled_rows"] < args.require_shadow:
            raise PromotionError(f"version {args.version} has {report['labelled_rows']} labelled shadow rows in "
                                 f"{report['log']}, fewer than --require-shadow {args.require_shadow}")
        if not report["not_worse"]["passed"]:
            raise PromotionError(f"version {args.version} is worse than the champion on shadow traffic: "
                                 f"{report['not_worse']['reason']}")
        print(f"shadow: {report['not_worse']['reason']}")
    entry = promote(client.tracking_uri, client, params.register.model_name, args.version, force=args.force, reason=args.reason)
    print(f"champion: version {entry['from'] or '(none)'} -> {entry['version']} ({entry['kind']}, by {entry['by']}): "
          f"{entry['reason']}")
    return 0


def cmd_serve_model(args) -> int:
    root, params, client = _registry(args)
    from distillery.serving.inputs import Limits
    from distillery.serving.predlog import Retention
    from distillery.serving.server import DEFAULT_CACHE, DEFAULT_LOG, ServeOptions, build_state, serve
    from tasks.serving_registry import RegistrySource

    for flag in ("threads", "max_body_bytes", "max_rows"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.poll_interval < 0:
        raise ConfigError(f"--poll-interval must be >= 0, got {args.poll_interval}")
    name = args.model_name or params.register.model_name
    source = RegistrySource(client.tracking_uri, name, root / DEFAULT_CACHE)
    opts = ServeOptions(alias=args.alias, shadow_alias=args.shadow, poll_interval=args.poll_interval,
                        threads=args.threads, log_path=None if args.no_log else Path(args.log or root / DEFAULT_LOG),
                        log_text=args.log_text, retention=Retention(args.log_max_rows, args.log_max_age_days),
                        limits=Limits(args.max_body_bytes, args.max_rows))
    serve(build_state(name, source.resolve, source.fetch, opts), args.host, args.port)
    return 0


def cmd_feedback(args) -> int:
    root = Path(args.project_dir).resolve()
    from distillery.serving.predlog import add_feedback, open_log_db
    from distillery.serving.server import DEFAULT_LOG, read_feedback_file

    try:
        items = read_feedback_file(args.file)
    except ValueError as exc:  # a malformed file is the user's input: one message, no traceback
        raise ConfigError(str(exc)) from None
    path = Path(args.log or root / DEFAULT_LOG)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prediction log")
    conn = open_log_db(path)
    try:
        unknown = add_feedback(conn, items)
    finally:
        conn.close()
    print(f"feedback: {len(items) - len(unknown)} label(s) stored in {path}"
          + (f"; {len(unknown)} request id(s) not in the log: {unknown[:10]}" if unknown else ""))
    return 1 if unknown and len(unknown) == len(items) else 0


def cmd_shadow_report(args) -> int:
    root, params = _project(args)
    from distillery.serving.server import DEFAULT_LOG, SHADOW_REPORT
    from distillery.serving.shadow_report import format_table, render_html, shadow_report

    report = shadow_report(Path(args.log or root / DEFAULT_LOG), shadow_version=args.version,
                           max_regression=params.gate.max_regression)
    out = Path(args.out or root / SHADOW_REPORT)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    page = out.with_suffix(".html")
    write_atomically(page, lambda tmp: tmp.write_text(render_html(report), encoding="utf-8"))
    print(format_table(report))
    print(f"shadow report: {out}, {page}")
    return 0


def cmd_rollback(args) -> int:
    root, params, client = _registry(args)
    from tasks.promotion import rollback

    entry = rollback(client.tracking_uri, client, params.register.model_name, reason=args.reason)
    print(f"champion: version {entry['from']} -> {entry['version']} (rollback, by {entry['by']})")
    return 0


def _project(args):
    """The project folder and its params; a broken params.yaml fails here, not in a run at 3 a.m."""
    root = Path(args.project_dir).resolve()
    configure_environment(root)
    return root, load_params(root / PARAMS_FILE, check_files=False)


def cmd_schedule(args) -> int:
    root, _ = _project(args)
    from flows.deploy import schedule

    schedule(root, args.cron, args.timezone)
    return 0


def cmd_serve(args) -> int:
    root, _ = _project(args)
    from flows.deploy import serve

    serve(root, args.watch_interval)
    return 0


def cmd_watch(args) -> int:
    root, _ = _project(args)
    from flows.deploy import watch

    watch(root, args.interval)
    return 0


def cmd_ui(args) -> int:
    root, params = _project(args)
    from distillery.dashboards import run_dashboards
    from tasks.tracking import tracking_uri

    return run_dashboards(root, tracking_uri(root, params), args.mlflow_port, args.prefect_port)


def cmd_report(args) -> int:
    """Rebuild reports/index.html for the project's last run (or --run-id); optionally screenshot it."""
    root, params, client = _registry(args)
    from tasks import tracking
    from tasks.run_report import last_pipeline_run, write_run_report

    run_id = args.run_id or last_pipeline_run(client, tracking.experiment_id(client, root, params), root)
    where = write_run_report(root, params, client, run_id, log=False)
    print(f"report: {where['path']} (MLflow run {run_id})")
    if args.screenshot:
        from distillery.browser import open_page

        page = open_page(where["path"], args.screenshot)
        print(f"report: screenshot {args.screenshot} ({len(page['images'])} plots, {len(page['tables'])} tables)")
    return 0


def cmd_dvc_deps(args) -> int:
    """Each stage's source files (from the import graph) as its code deps in dvc.yaml."""
    from distillery.code_deps import drift, write

    root = Path(args.project_dir).resolve()
    if args.write:
        changed = write(root)
        print(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: code deps up to date")
        return 0
    lines = drift(root)
    for line in lines:
        print(line)
    if lines:
        print("dvc.yaml's code deps differ from the imports: run `distillery dvc-deps --write`")
        return 1
    print("dvc.yaml: code deps up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillery", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=".", help="project folder holding params.yaml and dvc.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (Prefect flow over the DVC stages) and register")
    run.add_argument("--params", help=f"params file to run with (default: {PARAMS_FILE})")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a param, e.g. --set distill.temperature=3 (repeatable)")
    run.add_argument("--new-task", action="store_true",
                     help="the data's task (labels, inputs) differs from the champion's on purpose: replace it "
                          "(needs --reason; recorded in the champion history)")
    run.add_argument("--reason", help="why (with --new-task)")
    run.set_defaults(func=cmd_run)
    pull = sub.add_parser("pull", help="restore data, models and reports from the DVC remote (a fresh clone then "
                                       "trains nothing)")
    pull.add_argument("--remote", help="DVC remote name (default: remote.name, else DVC's default remote)")
    pull.set_defaults(func=cmd_pull)
    sweep = sub.add_parser("sweep", help="try the student configurations of params.yaml's `sweep` in parallel on "
                                         "Dask; write the Pareto front and the best one's params file")
    sweep.add_argument("--address", help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a "
                                         "temporary local cluster)")
    sweep.add_argument("--workers", type=int, help="worker processes of the local cluster (default: sweep.workers)")
    sweep.set_defaults(func=cmd_sweep)
    stage = sub.add_parser("stage", help="run one pipeline stage (called by dvc.yaml)")
    stage.add_argument("name", help="a stage of the project's dvc.yaml")
    stage.set_defaults(func=cmd_stage)
    status = sub.add_parser("status", help="champion and challenger versions, their figures, the last gate")
    status.set_defaults(func=cmd_status)
    promote = sub.add_parser("promote", help="move `champion` to VERSION (refused if its gate failed, unless forced)")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="promote a version that failed its gate")
    promote.add_argument("--reason", help="why (required with --force; recorded in the champion history)")
    promote.add_argument("--require-shadow", type=int, metavar="N",
                         help="refuse unless VERSION has at least N labelled shadow rows in the prediction log "
                              "and is not worse than the champion there under the gate's rule")
    promote.add_argument("--log", help="prediction log for --require-shadow (default serving/predictions.db)")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser("rollback", help="return `champion` to the version that held it before")
    rollback.add_argument("--reason", help="why (recorded in the champion history)")
    rollback.set_defaults(func=cmd_rollback)
    add_serving_parsers(sub)
    report = sub.add_parser("report", help="rebuild the run report reports/index.html for the last run")
    report.add_argument("--run-id", help="the MLflow parent run of the pipeline run (default: the project's last)")
    report.add_argument("--screenshot", metavar="PNG", help="also open it in headless Chromium and save a screenshot")
    report.set_defaults(func=cmd_report)
    bench = sub.add_parser("bench", help="benchmark on SST-2: the pipeline, then the teacher, its int8 versions, "
                                         "a no-teacher baseline and our student measured side by side")
    bench.add_argument("--benchmark", choices=["sst2", "mrpc"], default="sst2",
                       help="sst2 (single sentences) or mrpc (GLUE paraphrase sentence pairs); default sst2")
    bench.add_argument("--data", help="folder holding train.tsv and dev.tsv (default: ../shared/data/sst2 "
                                      "beside the checkout)")
    bench.add_argument("--quick", action="store_true", help="a tiny seeded slice, to check the code path")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override the benchmark profile, e.g. --set distill.epochs=3 or bench.train_rows=500")
    bench.add_argument("--work-dir", help="bench project folder (default bench/work/sst2; rebuilt on each run)")
    bench.add_argument("--out-dir", help="where the JSON, markdown and plots go (default bench/results)")
    bench.add_argument("--reuse-work", action="store_true",
                       help="keep the bench project (DVC skips what is unchanged): re-measures, but no first-run time")
    bench.add_argument("--update-readme", action="store_true", help="write the report into README.md's bench section")
    bench.set_defaults(func=cmd_bench)
    schedule = sub.add_parser("schedule", help="create or update the retraining deployment on the Prefect server "
                                               "(PREFECT_API_URL): a cron schedule plus a run on new data")
    schedule.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * 1" (Mondays 03:00)')
    schedule.add_argument("--timezone", default="UTC", help="time zone of the cron expression (default UTC)")
    schedule.set_defaults(func=cmd_schedule)
    serve = sub.add_parser("serve", help="run the retraining deployment's runs here and watch the data, until Ctrl-C")
    serve.add_argument("--watch-interval", type=float, default=30.0, metavar="SECONDS",
                       help="how often to look for new data (default 30; 0: do not watch)")
    serve.set_defaults(func=cmd_serve)
    watch = sub.add_parser("watch", help="watch the data files alone; new content sends the event that starts a run")
    watch.add_argument("--interval", type=float, default=30.0, metavar="SECONDS", help="default 30")
    watch.set_defaults(func=cmd_watch)
    ui = sub.add_parser("ui", help="the MLflow UI and the Prefect UI over this project's stores, until Ctrl-C")
    ui.add_argument("--mlflow-port", type=int, default=5000, help="default 5000")
    ui.add_argument("--prefect-port", type=int, default=4200, help="default 4200")
    ui.set_defaults(func=cmd_ui)
    deps = sub.add_parser("dvc-deps", help="check (or --write) each dvc.yaml stage's code deps: the source files "
                                           "its task module imports, transitively")
    deps.add_argument("--write", action="store_true", help="rewrite them in dvc.yaml")
    deps.set_defaults(func=cmd_dvc_deps)
    return parser


def add_serving_parsers(sub) -> None:
    serve = sub.add_parser("serve-model", help="serve the registry's champion over HTTP (mlflow models serve's "
                                               "formats), following the alias as it moves")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5001)
    serve.add_argument("--model-name", help="registered model (default register.model_name)")
    serve.add_argument("--alias", default="champion", help="alias to serve and follow (default champion)")
    serve.add_argument("--shadow", metavar="ALIAS", help="also score every request with this alias (e.g. "
                                                         "challenger), off the response path, and log it")
    serve.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                       help="how often to look for a moved alias (default 5; 0: never)")
    serve.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per request (default 1)")
    serve.add_argument("--log", help="prediction log, SQLite (default serving/predictions.db)")
    serve.add_argument("--no-log", action="store_true", help="keep no prediction log")
    serve.add_argument("--log-text", action="store_true", help="store the input text too (default: its hash only)")
    serve.add_argument("--log-max-rows", type=int, default=1_000_000, help="retention: rows kept (default 1e6)")
    serve.add_argument("--log-max-age-days", type=float, default=30.0, help="retention: days kept (default 30)")
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body limit (default 1 MB)")
    serve.add_argument("--max-rows", type=int, default=256, help="rows per request limit (default 256)")
    serve.set_defaults(func=cmd_serve_model)
    feedback = sub.add_parser("feedback", help="attach ground-truth labels to logged requests: FILE is CSV "
                                               "(request_id,label[,row]) or JSON lines")
    feedback.add_argument("file")
    feedback.add_argument("--log", help="prediction log (default serving/predictions.db)")
    feedback.set_defaults(func=cmd_feedback)
    shadow = sub.add_parser("shadow-report", help="champion vs shadow on logged traffic: agreement, accuracy on "
                                                  "the labelled part with paired statistics, latency")
    shadow.add_argument("--version", help="only this shadow version (default: all)")
    shadow.add_argument("--log", help="prediction log (default serving/predictions.db)")
    shadow.add_argument("--out", help="JSON file (default reports/shadow_report.json; the page beside it, .html)")
    shadow.set_defaults(func=cmd_shadow_report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from distillery.interrupts import Interrupted, install_handlers, stop_children, stop_requests

    # `run` and the stages it starts: the long-running pipeline (serve, ui and watch keep their own
    # Ctrl-C handling).
    signalled = args.command in ("run", "stage") and threading.current_thread() is threading.main_thread()
    previous = install_handlers() if signalled else {}
    recorded = stop_requests() if signalled else contextlib.nullcontext(lambda: None)
    finished = False
    try:  # SIGTERM / SIGINT raise Interrupted: `finally` blocks run, and the exit code says so
        with recorded as pending:
            code = args.func(args)
            signum = pending()
            if signum is None:
                return code
            finished = True  # the signal's exception was lost on the way (raised inside a finalizer)
            raise Interrupted(signum)
    except (Interrupted, KeyboardInterrupt) as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        stopped = stop_children()  # what the signal did not reach (it came to this process only)
        extra = f"; stopped {len(stopped)} child process(es)" if stopped else ""
        after = ("; it came as the run was finishing, and the run completed first" if finished else
                 "; the next run resumes from the stages that finished")
        print(f"distillery {args.command}: {exc or 'interrupted'} (exit {code}){extra}{after}", file=sys.stderr)
        return code
    except BaseException as exc:
        if isinstance(exc, user_error_types()):
            print(f"distillery: error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
        raise
    finally:
        for sig, handler in previous.items():  # main() may be called in-process (tests)
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
