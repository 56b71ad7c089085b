"""Stage soft_targets: the distillation set (the training rows distillation uses, plus
augmented texts when `augment.copies` > 0) and the teacher's logits on every row of it,
fused with further teachers' when `distill.teachers` lists any.

Computed once per dataset: distill and prune read them from disk, so the teachers never
run inside a training loop (except for the intermediate-layer losses, which need the
main teacher's hidden states). Extra teachers are identified by path in params.yaml
(DVC cannot template a list of directories as deps): after replacing one in place, run
`dvc repro -f soft_targets`; their DVC hashes (distillery/lineage.py) are recorded in the report.

The logits are computed in chunks of `soft_targets.chunk_rows` rows, each a task (on Dask when
the CLI passes `compute`, see flows/soft_targets.py; else in this process) that writes its own
Parquet file in `<logits_dir>/chunks/`, named by what determines its content (the teacher directory's DVC hash,
the rows, max_length). The folder is `persist` in dvc.yaml, so a killed run leaves its finished
chunks there and the next run computes only the missing ones; distill and prune still read the
fused `logits.npy` beside them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from distillery.config import Params
from distillery.lineage import content_md5
from tasks.common import StageContext, write_report

SET_FILE = "distill_set.parquet"
LOGITS_FILE = "logits.npy"
CHUNKS_DIR = "chunks"              # <logits_dir>/chunks: one Parquet file per chunk (kept: dvc.yaml `persist`)
CHUNK_TEXTS = "texts.parquet"      # the rows to score, one row group per chunk
CHUNK_FORMAT = "1"                 # part of every chunk's identity: bump when the file layout changes


def _classifier(model_dir: Path, max_length: int, threads: int, truncation: str = "head"):
    """A raw-text classifier over any model directory this project writes (PyTorch or ONNX)."""
    from distillery.modeling import ModelLoadError, load_model_dir, read_labels

    if not model_dir.is_dir():
        raise ModelLoadError(f"params.yaml: distill.teachers: {model_dir} is not a model directory")
    if (model_dir / "model.onnx").exists():
        from distillery.onnx_model import OnnxClassifier

        return OnnxClassifier.from_dir(model_dir, threads=threads), read_labels(model_dir)
    from distillery.training import TorchClassifier

    model, tokenizer, labels, _ = load_model_dir(model_dir)
    return TorchClassifier(model, tokenizer, max_length, truncation=truncation), labels


def run(ctx: StageContext, compute: Callable[[list[dict]], object] | None = None) -> dict:
    """`compute(specs)` computes the given chunks (e.g. as tasks on Dask); default: one by one here."""
    import torch

    from distillery.augment import augment_texts
    from distillery.data import TextDataset, save_split
    from distillery.losses import fuse_soft_targets
    from distillery.modeling import replace_dir
    from tasks.models import load_splits

    p, a, d = ctx.params, ctx.params.augment, ctx.params.distill
    train_set, _, labels = load_splits(ctx)
    texts, y = train_set.inputs[: d.max_train_rows], train_set.labels[: d.max_train_rows]
    start = time.perf_counter()
    aug, source = augment_texts(texts, a.copies, mask_prob=a.mask_prob, replace_prob=a.replace_prob,
                                ngram_prob=a.ngram_prob, max_ngram=a.max_ngram, seed=p.base.seed)
    augment_seconds = time.perf_counter() - start
    all_texts = list(texts) + aug  # strings, or (text, text_pair) tuples
    all_labels = np.concatenate([y, np.full(len(aug), -1, dtype=np.int64)])  # -1: no gold label
    print(f"soft_targets: {len(texts)} training rows + {len(aug)} augmented ({a.copies} per row)")

    teachers = [(ctx.path(p.paths.teacher_dir), d.teacher_weight)] + [(ctx.path(t.path), t.weight) for t in d.teachers]
    all_logits, info = [], []
    start = time.perf_counter()
    cache = ctx.path(p.paths.logits_dir) / CHUNKS_DIR
    texts_file = write_chunk_texts(all_texts, cache, p.soft_targets.chunk_rows)
    specs_by_teacher = []
    for model_dir, weight in teachers:
        their_labels = _teacher_labels(model_dir)
        if [str(x) for x in their_labels] != [str(x) for x in labels]:
            raise ValueError(f"params.yaml: distill.teachers: {model_dir} classifies into {their_labels}, "
                             f"the data into {labels}")
        md5 = content_md5(model_dir)
        specs_by_teacher.append(plan_chunks(model_dir, md5, all_texts, texts_file, p))
        info.append({"path": str(model_dir.relative_to(ctx.root) if model_dir.is_relative_to(ctx.root) else model_dir),
                     "weight": weight, "md5": md5})
    every = [s for specs in specs_by_teacher for s in specs]
    missing = list({s["out"]: s for s in every if not Path(s["out"]).exists()}.values())  # identical teachers share
    print(f"soft_targets: {len(every)} chunk(s) of <= {p.soft_targets.chunk_rows} rows, {len(missing)} to compute "
          f"({len(every) - len(missing)} done by an earlier run)")
    (compute or compute_in_process)(missing)
    for specs, entry in zip(specs_by_teacher, info):
        logits = read_chunks(specs, len(labels))
        all_logits.append(torch.from_numpy(logits))
        entry["train_accuracy"] = float((logits[: len(y)].argmax(1) == y).mean()) if len(y) else 0.0
    prune_chunks(cache, every)
    (cache / CHUNK_TEXTS).unlink()  # the rows are in SET_FILE too
    fused = (fuse_soft_targets(all_logits, [w for _, w in teachers], d.temperature) if len(teachers) > 1
             else all_logits[0]).numpy()
    logits_seconds = time.perf_counter() - start

    out = ctx.path(p.paths.logits_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # written whole, then swapped in: never half a set
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pairs = train_set.pairs is not None
    save_split(TextDataset([x[0] for x in all_texts] if pairs else all_texts, all_labels,
                           [x[1] for x in all_texts] if pairs else None), tmp / SET_FILE)
    np.save(tmp / LOGITS_FILE, fused.astype(np.float32), allow_pickle=False)
    os.replace(cache, tmp / CHUNKS_DIR)  # the chunks move with the set (a kill right here costs them)
    replace_dir(tmp, out)
    fused_agree = float((fused[: len(y)].argmax(1) == y).mean()) if len(y) else 0.0
    report = {"rows": len(all_texts), "train_rows": len(texts), "augmented_rows": len(aug),
              "teachers": info, "fused_train_accuracy": fused_agree,
              "augment_seconds": augment_seconds, "logits_seconds": logits_seconds,
              "chunks": len(every), "chunks_computed": len(missing)}
    write_report(ctx, "soft_targets", report)
    return report


def _teacher_labels(model_dir: Path) -> list:
    from distillery.modeling import ModelLoadError, read_labels

    if not model_dir.is_dir():
        raise ModelLoadError(f"params.yaml: distill.teachers: {model_dir} is not a model directory")
    return read_labels(model_dir)


def write_chunk_texts(texts: list, cache: Path, chunk_rows: int) -> Path:
    """The rows to score as Parquet, one row group per chunk: a worker reads only its own rows.
    Rows are strings, or (text, text_pair) tuples (then a `text_pair` column too)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillery.fileio import write_atomically

    cache.mkdir(parents=True, exist_ok=True)
    for left in cache.glob(".*.tmp"):  # what a killed writer left
        left.unlink(missing_ok=True)
    pairs = bool(len(texts)) and isinstance(texts[0], tuple)
    columns = {"text": pa.array([t[0] for t in texts] if pairs else list(texts), pa.string())}
    if pairs:
        columns["text_pair"] = pa.array([t[1] for t in texts], pa.string())
    table = pa.table(columns)
    return write_atomically(cache / CHUNK_TEXTS, lambda tmp: pq.write_table(table, tmp, row_group_size=max(chunk_rows, 1)))


def plan_chunks(model_dir: Path, teacher_md5: str, texts: list[str], texts_file: Path, p: Params) -> list[dict]:
    """One spec per chunk (plain values: they travel to Dask workers and into Prefect task runs).
    A chunk's file name is the md5 of everything that determines its logits."""
    n, size = len(texts), p.soft_targets.chunk_rows
    specs = []
    for group, start in enumerate(range(0, n, size)):
        h = hashlib.md5(f"{CHUNK_FORMAT}\0{teacher_md5}\0{p.data.max_length}\0{p.data.truncation}\0{start}\0".encode())
        for t in texts[start:start + size]:
            for part in (t if isinstance(t, tuple) else (t,)):
                h.update(part.encode())
                h.update(b"\0")
            h.update(b"\1")
        specs.append({"model_dir": str(model_dir), "teacher_md5": teacher_md5, "texts_file": str(texts_file),
                      "row_group": group, "start": start, "rows": min(size, n - start),
                      "max_length": p.data.max_length, "truncation": p.data.truncation, "threads": p.base.threads,
                      "out": str(texts_file.parent / f"{teacher_md5[:12]}-{start:010d}-{h.hexdigest()}.parquet")})
    return specs


_LOADED: dict = {}  # per worker process: the last teacher used, so a worker loads each teacher once


def compute_chunk(spec: dict) -> str:
    """Score one chunk's rows with its teacher and write them atomically as their own Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillery.fileio import write_atomically

    key = (spec["model_dir"], spec["teacher_md5"], spec["max_length"], spec["truncation"], spec["threads"])
    if key not in _LOADED:
        _LOADED.clear()
        import torch

        torch.set_num_threads(spec["threads"])
        _LOADED[key] = _classifier(Path(spec["model_dir"]), spec["max_length"], spec["threads"], spec["truncation"])[0]
    group = pq.ParquetFile(spec["texts_file"]).read_row_group(spec["row_group"])
    texts = group.column("text").to_pylist()
    if "text_pair" in group.column_names:
        texts = list(zip(texts, group.column("text_pair").to_pylist()))
    if len(texts) != spec["rows"]:
        raise RuntimeError(f"{spec['texts_file']}: row group {spec['row_group']} has {len(texts)} rows, "
                           f"expected {spec['rows']} (rewritten during the run?)")
    logits = np.asarray(_LOADED[key].predict_logits(texts, batch_size=64), dtype=np.float32)
    table = pa.table({"row": pa.array(np.arange(spec["start"], spec["start"] + len(texts)), pa.int64()),
                      **{f"logit_{j}": pa.array(logits[:, j]) for j in range(logits.shape[1])}})
    return str(write_atomically(spec["out"], lambda tmp: pq.write_table(table, tmp)))


def compute_in_process(specs: list[dict]) -> None:
    try:
        for spec in specs:
            compute_chunk(spec)
    finally:
        _LOADED.clear()  # the stage goes on to fuse and save: the teacher's memory is not needed there


def read_chunks(specs: list[dict], n_labels: int) -> np.ndarray:
    """One teacher's logits [rows, n_labels], in row order, from its chunk files."""
    import pyarrow.parquet as pq

    parts = []
    for spec in specs:
        table = pq.read_table(spec["out"])
        rows = table.column("row").to_numpy()
        if len(rows) != spec["rows"] or (len(rows) and rows[0] != spec["start"]):
            raise RuntimeError(f"{spec['out']}: holds rows {rows[:1]}.. ({len(rows)}), expected {spec['rows']} "
                               f"from {spec['start']}")
        parts.append(np.stack([table.column(f"logit_{j}").to_numpy() for j in range(n_labels)], axis=1))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, n_labels), np.float32)


def prune_chunks(cache: Path, keep: list[dict]) -> None:
    """Drop chunk files of earlier data, teachers or chunk sizes: the cache holds this run's only."""
    wanted = {Path(s["out"]).name for s in keep} | {CHUNK_TEXTS}
    for f in cache.glob("*.parquet"):
        if f.name not in wanted:
            f.unlink(missing_ok=True)
