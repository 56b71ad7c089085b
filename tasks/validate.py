"""Stage validate: the Great Expectations suite over train and eval data.

Writes the validated splits (text + class index, Parquet), the label map and a manifest
of the md5 of every file it validated, for the later stages; the GX Data Docs (HTML) of
every run under `reports/validation/`; and `reports/validate.json`, whatever the outcome.
Failure stops here, before any training, with the failed checks, their files and sample
rows in one message. The length-drift check against the champion needs the registry, so
the flow runs it after this stage (`length_shift`); `dvc repro` alone skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.config import Params
from tasks.common import StageContext, write_report

VALIDATION_DOCS = "validation"
USES_TORCH = False  # the stage runs without importing torch (saves ~3 s)
PROFILE_TAG = "data_length_profile"  # on each registered version: its data's text-length profile


def docs_rel(p: Params) -> str:
    return f"{p.paths.reports_dir}/{VALIDATION_DOCS}"


def run(ctx: StageContext) -> dict:
    """Bounded memory: each file is read in batches (`data.iter_source`, SOURCE_BATCH_ROWS rows)
    three times: a summary pass (md5, rows, label counts, 16 bytes of key hash a row:
    `validation.SplitSummary`), the GX suite batch by batch against those summaries, and the
    validated split written batch by batch. Nothing holds a whole file's text."""
    from distillery.data import write_validated
    from distillery.drift import lengths_profile
    from distillery.validation import ValidationFailed, format_warnings

    p = ctx.params
    files = {"train": p.data.train_path, "eval": p.data.eval_path}
    sources, results = _read(ctx, files)
    labels = None
    if sources:
        labels, results = _run_suite(ctx, files, sources)
    report = {"success": all(r.success for r in results), "rows": {r.split: r.rows for r in results},
              "warnings": sum(len(r.warnings) for r in results), "results": [r.to_dict() for r in results]}
    if sources:
        report["docs"] = f"{docs_rel(p)}/index.html"
    if not report["success"]:
        write_report(ctx, "validate", report)
        raise ValidationFailed(results)

    lengths: dict[str, list] = {name: [] for name in files}
    manifest = write_validated(ctx.path(p.paths.validated_dir),
                               {name: _encoded(ctx, rel, sources[name], labels, lengths[name]) for name, rel in files.items()},
                               labels, {name: {"path": files[name], "md5": src.md5} for name, src in sources.items()})
    report.update(labels=labels.names, md5={n: s["source_md5"] for n, s in manifest["splits"].items()},
                  length_profile={name: lengths_profile(np.concatenate(parts)) for name, parts in lengths.items()})
    write_report(ctx, "validate", report)
    for line in format_warnings(results):
        print(line)
    warned = f" with {report['warnings']} warning(s)" if report["warnings"] else ""
    rows = manifest["splits"]
    print(f"validate: train {rows['train']['rows']} rows, eval {rows['eval']['rows']} rows, labels {labels.names}: "
          f"passed{warned} (report: {report['docs']})")
    return report


@dataclass
class _Source:
    """A user's file as the stage knows it between passes: its md5 and its `SplitSummary`."""

    path: Path
    md5: str
    summary: object

    def frames(self, ctx: StageContext):
        from distillery.data import iter_source

        d = ctx.params.data
        return iter_source(self.path, d.text_column, d.label_column, d.text_pair_column, md5=self.md5)


def _encoded(ctx: StageContext, rel: str, src: _Source, labels, lengths: list):
    """The validated batches of one file (class indices, not labels), recording each text's length."""
    from distillery.data import TEXT_PAIR, TextDataset

    for df in src.frames(ctx):
        texts = df["text"].tolist()
        lengths.append(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)))
        yield TextDataset(texts, labels.encode(df["label"], rel),
                          df[TEXT_PAIR].tolist() if TEXT_PAIR in df.columns else None)


def _read(ctx: StageContext, files: dict[str, str]):
    """Both files summarised (a first pass, in batches), or (when either cannot be read at all: the
    one thing to fix first) no sources and a result per split saying which could not be read and why."""
    from distillery.data import DataError, source_md5
    from distillery.validation import SplitSummary, SplitValidation, unreadable

    sources, unread = {}, {}
    for name, rel in files.items():
        try:
            src = _Source(ctx.path(rel), source_md5(ctx.path(rel)), SplitSummary())
            for df in src.frames(ctx):
                src.summary.add(df)
            src.summary.finish()
            sources[name] = src
        except DataError as exc:
            unread[name] = unreadable(name, rel, str(exc).replace(str(ctx.path(rel)), rel))
    if not unread:
        return sources, []
    return {}, [unread.get(name) or SplitValidation(name, rel, sources[name].summary.rows, True, [])
                for name, rel in files.items()]


def _run_suite(ctx: StageContext, files: dict[str, str], sources: dict):
    """The label map, the GX suite on both splits (eval against train for leakage), the label
    map against the teacher's, and the Data Docs swapped into place."""
    from distillery.data import DataError, LabelMap
    from distillery.fileio import atomic_dir
    from distillery.validation import CLASSES_PRESENT, Failure, SuiteRunner, teacher_label_failure

    p = ctx.params
    labels, problems = None, []
    try:
        labels = LabelMap.from_labels(p.data.labels, list(sources["train"].summary.labels_seen))
    except DataError as exc:  # fewer than two classes in train, with labels to be inferred
        problems.append(Failure(CLASSES_PRESENT, p.data.label_column, str(exc)))
    names = labels.names if labels else None
    if labels is not None:
        problems.append(teacher_label_failure(labels.names, _teacher_head_labels(ctx), p.teacher.model,
                                              p.teacher.finetune))
    with atomic_dir(ctx.path(docs_rel(p))) as docs_tmp:
        runner = SuiteRunner(docs_tmp)
        results = [runner.validate_batches(sources[name].frames(ctx), name, rel, p.data, p.validate_, names,
                                           sources[name].summary,
                                           sources["train"].summary.keys if name == "eval" else None)
                   for name, rel in files.items()]
        runner.build_docs()
    for f in filter(None, problems):  # the label map is train's (declared, or inferred from it)
        results[0].failures.append(f)
        results[0].success = False
    return labels, results


def _teacher_head_labels(ctx: StageContext) -> list[str] | None:
    from distillery.model_source import ModelLoadError, head_labels, resolve_model_source

    try:
        source, kind = resolve_model_source(ctx.params.teacher.model, ctx.root)
    except ModelLoadError:
        return None  # the teacher stage reports an unusable teacher.model
    return head_labels(source, kind)


def length_shift(root: Path, params: Params, client) -> dict:
    """Text-length drift of the validated data against the current champion's (run by the flow:
    it needs the registry). The champion's profile is the `data_length_profile` tag of its version."""
    import json

    from mlflow.exceptions import MlflowException

    from distillery.drift import check_length_shift

    cfg = params.validate_.length_shift
    try:
        champ = client.get_model_version_by_alias(params.register.model_name, "champion")
    except MlflowException:
        champ = None
    profile = None
    if champ is not None and champ.tags.get(PROFILE_TAG):
        try:
            profile = json.loads(champ.tags[PROFILE_TAG])
        except ValueError:
            profile = None
    vdir = Path(root) / params.paths.validated_dir
    texts = {name: _StreamedTexts(vdir / f"{name}.parquet") for name in ("train", "eval")}
    return check_length_shift(texts, profile, str(champ.version) if champ is not None else None,
                              cfg.warn_psi, cfg.fail_psi)


class _StreamedTexts:
    """A validated split's texts, read a row group at a time whenever they are iterated (the
    length-shift check counts characters: it never needs them all at once)."""

    def __init__(self, path: Path):
        self.path = path

    def __len__(self) -> int:
        from distillery.data import split_rows

        return split_rows(self.path)

    def __iter__(self):
        from distillery.data import SPLIT_ROW_GROUP, iter_split

        for batch in iter_split(self.path, SPLIT_ROW_GROUP):
            yield from batch.texts


def profile_tag(root: Path, params: Params) -> dict[str, str]:
    """The validated data's length profile, as the tag a registered version carries (see `length_shift`)."""
    import json

    from tasks.common import read_json, report_path

    path = report_path(root, params, "validate")
    profile = read_json(path).get("length_profile") if path.exists() else None
    return {PROFILE_TAG: json.dumps(profile, separators=(",", ":"))} if profile else {}
