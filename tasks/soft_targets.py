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

Memory is bounded by a chunk, not by the data: the training rows are streamed from the validated
split (Parquet row groups), written to the rows file one chunk (one row group) at a time while the
chunks are planned, and the fused logits are written to `logits.npy` chunk by chunk. The rows file,
with each row's class index (-1 for an augmented text), becomes the distillation set itself.
Augmentation holds 4 bytes per training word (the replacement pool, see distillery/augment.py).

Cross-fitting (`teacher.cross_fit_folds` > 0, the teacher_folds stage): the main teacher's logits
are replaced by out-of-fold ones. Each row (and each augmented copy, by its source row) carries its
fold in the rows file, each chunk is scored once per fold teacher, on that fold's rows only, and
its K files are put back in row order when the logits are fused (2 bytes a training row hold the
folds of the rows the copies come from). Further teachers are fused as before.
"""

from __future__ import annotations

import hashlib
import os
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
    """`compute(specs)` computes the given chunks (e.g. as tasks on Dask); default: one by one here.

    Bounded memory: the training rows are streamed from the validated split and written chunk by
    chunk (`ChunkedRows`), augmentation draws from a word-id pool (`augment_batches`), and the
    fused logits are written chunk by chunk; no step holds every row, text or logit at once.
    """
    from distillery.augment import augment_batches
    from distillery.data import iter_split
    from distillery.fileio import atomic_dir
    from distillery.folds import read_manifest, row_folds
    from tasks.models import checked_validated

    p, a, d = ctx.params, ctx.params.augment, ctx.params.distill
    vdir, labels = checked_validated(ctx)
    folds_dir = ctx.path(p.paths.teacher_folds_dir)
    cross_fit = read_manifest(folds_dir)
    train_file, size = vdir / "train.parquet", p.soft_targets.chunk_rows

    def train_rows():
        return (batch.inputs for batch in iter_split(train_file, size, limit=d.max_train_rows))

    teachers = [(ctx.path(p.paths.teacher_dir), d.teacher_weight)] + [(ctx.path(t.path), t.weight) for t in d.teachers]
    info = []
    for model_dir, weight in teachers:
        their_labels = _teacher_labels(model_dir)
        if [str(x) for x in their_labels] != [str(x) for x in labels]:
            raise ValueError(f"params.yaml: distill.teachers: {model_dir} classifies into {their_labels}, "
                             f"the data into {labels}")
        info.append({"path": str(model_dir.relative_to(ctx.root) if model_dir.is_relative_to(ctx.root) else model_dir),
                     "weight": weight, "md5": teacher_identity(model_dir)})

    scorers: list = [(model_dir, e["md5"]) for (model_dir, _), e in zip(teachers, info)]
    k_folds = cross_fit["folds"]
    if k_folds:  # the main teacher's targets come from the fold teachers, each on the rows it did not see
        fold_dirs = [folds_dir / name for name in cross_fit["teachers"]]
        scorers[0] = [(f, teacher_identity(f)) for f in fold_dirs]
        info[0].update(cross_fit_folds=k_folds, fold_teachers=[md5 for _, md5 in scorers[0]])

    start = time.perf_counter()
    cache = ctx.path(p.paths.logits_dir) / CHUNKS_DIR
    with ChunkedRows(cache, size, scorers, p, k_folds) as rows:
        train_folds = []  # each training row's fold (cross-fitting): an augmented copy takes its source's
        for batch in iter_split(train_file, size, limit=d.max_train_rows):
            folds = row_folds(batch.inputs, k_folds, cross_fit["seed"]) if k_folds else None
            rows.add(batch.inputs, train=True, labels=batch.labels, folds=folds)
            train_folds.append(folds)
        train_folds = np.concatenate(train_folds) if k_folds and train_folds else None
        n_train = rows.added
        aug_start = time.perf_counter()
        for batch, source in augment_batches(train_rows, a.copies, mask_prob=a.mask_prob,
                                             replace_prob=a.replace_prob, ngram_prob=a.ngram_prob,
                                             max_ngram=a.max_ngram, seed=p.base.seed):
            rows.add(batch, train=False, folds=None if train_folds is None else train_folds[source])
        augment_seconds = time.perf_counter() - aug_start
    n_rows, specs_by_teacher = rows.added, rows.specs
    print(f"soft_targets: {n_train} training rows + {n_rows - n_train} augmented ({a.copies} per row)")
    every = [f for specs in specs_by_teacher for s in specs for f in chunk_files(s)]
    missing = list({s["out"]: s for s in every if not Path(s["out"]).exists()}.values())  # identical teachers share
    missing.sort(key=lambda s: s["model_dir"])  # a teacher's chunks together: loaded once in this process
    print(f"soft_targets: {len(every)} chunk(s) of <= {size} rows, {len(missing)} to compute "
          f"({len(every) - len(missing)} done by an earlier run)")
    (compute or compute_in_process)(missing)
    prune_chunks(cache, every)

    with atomic_dir(ctx.path(p.paths.logits_dir)) as tmp:  # written whole, then swapped in: never half a set
        agree = write_fused_logits(tmp / LOGITS_FILE, rows.path, specs_by_teacher, [w for _, w in teachers],
                                   d.temperature, len(labels))
        logits_seconds = time.perf_counter() - start - augment_seconds
        os.replace(rows.path, tmp / SET_FILE)  # the rows with their labels (-1: augmented) are the distillation set
        os.replace(cache, tmp / CHUNKS_DIR)  # the chunks move with the set (a kill right here costs them)
    for entry, correct in zip(info, agree[:-1]):
        entry["train_accuracy"] = correct / n_train if n_train else 0.0
    report = {"rows": n_rows, "train_rows": n_train, "augmented_rows": n_rows - n_train,
              "teachers": info, "fused_train_accuracy": agree[-1] / n_train if n_train else 0.0,
              "augment_seconds": augment_seconds, "logits_seconds": logits_seconds,
              "chunks": len(every), "chunks_computed": len(missing)}
    write_report(ctx, "soft_targets", report)
    return report


def teacher_identity(model_dir: Path) -> str:
    """What a teacher's logits depend on: its weights, config, tokenizer and labels, by DVC's file
    hashes; not distillery.json's provenance, so the same teacher saved again by another project
    (e.g. `finetune: false` over this project's teacher) finds its chunks."""
    from distillery.modeling import META_FILE

    files = sorted(f for f in model_dir.iterdir() if f.is_file() and f.name != META_FILE)
    return hashlib.md5("\0".join(f"{f.name}:{content_md5(f)}" for f in files).encode()).hexdigest()


def load_distill_set(ctx: StageContext):
    """(texts + labels, teacher logits) written by the soft_targets stage; label -1 marks an
    augmented text (no gold label)."""
    from distillery.data import load_split

    d = ctx.path(ctx.params.paths.logits_dir)
    data, logits = load_split(d / SET_FILE), np.load(d / LOGITS_FILE, allow_pickle=False)
    if len(logits) != len(data):
        raise ValueError(f"{d}: {len(data)} texts but {len(logits)} rows of teacher logits; "
                         "run `dvc repro -f soft_targets`")
    return data, logits


def _teacher_labels(model_dir: Path) -> list:
    from distillery.modeling import ModelLoadError, read_labels

    if not model_dir.is_dir():
        raise ModelLoadError(f"params.yaml: distill.teachers: {model_dir} is not a model directory")
    return read_labels(model_dir)


class ChunkedRows:
    """Writes the rows to score to `<cache>/texts.parquet`, one row group of `chunk_rows` rows per
    chunk (a worker reads only its own), with their labels (-1: augmented, no gold label), and
    plans each chunk's spec per teacher as its rows go by: nothing holds more than one chunk.
    Rows are strings, or (text, text_pair) tuples (then a `text_pair` column too).

    A teacher is (model dir, identity), or, for cross-fitting, the list of the `folds` fold
    teachers: its spec for a chunk is then a list, one spec per fold teacher, each scoring the
    chunk's rows of its fold (the rows' folds go to add(), and to a `fold` column)."""

    def __init__(self, cache: Path, chunk_rows: int, teachers: list, p: Params, folds: int = 0):
        self.cache, self.size, self.teachers, self.p = cache, max(chunk_rows, 1), teachers, p
        self.folds = folds
        self._folds: list[int] = []
        self.path = cache / CHUNK_TEXTS
        self.count, self.specs = 0, [[] for _ in teachers]  # count: rows written (whole chunks so far)
        self.added = 0  # rows given to add(), written or still pending
        self._rows: list = []
        self._labels: list[int] = []
        self._writer = self._tmp = None
        self._pairs: bool | None = None

    def __enter__(self) -> ChunkedRows:
        import tempfile

        self.cache.mkdir(parents=True, exist_ok=True)
        for left in self.cache.glob(".*.tmp"):  # what a killed writer left
            left.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CHUNK_TEXTS}.", suffix=".tmp", dir=self.cache)
        os.close(fd)
        self._tmp = Path(tmp)
        return self

    def add(self, rows: list, *, train: bool, labels=None, folds=None) -> None:
        """Rows in order; training rows carry their class index (`labels`), augmented ones -1;
        with cross-fitting, every row its fold (`folds`)."""
        if self._pairs is None and len(rows):
            self._pairs = isinstance(rows[0], tuple)
        if self.folds:
            if folds is None or len(folds) != len(rows):
                raise ValueError(f"cross-fitting: {len(rows)} rows need as many folds")
            self._folds += [int(f) for f in folds]
        self._rows += rows
        self._labels += list(labels) if train else [-1] * len(rows)
        self.added += len(rows)
        while len(self._rows) >= self.size:
            self._flush(self.size)

    def _flush(self, n: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, self._rows = self._rows[:n], self._rows[n:]
        labels, self._labels = self._labels[:n], self._labels[n:]
        folds, self._folds = self._folds[:n], self._folds[n:]
        columns = {"text": pa.array([t[0] for t in rows] if self._pairs else rows, pa.string())}
        if self._pairs:
            columns["text_pair"] = pa.array([t[1] for t in rows], pa.string())
        if self.folds:
            columns["fold"] = pa.array(folds, pa.int16())
        table = pa.table({**columns, "label": pa.array(labels, pa.int64())})
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table, row_group_size=max(len(table), 1))
        for teacher, specs in zip(self.teachers, self.specs):
            if isinstance(teacher, list):  # fold teachers: one spec each, for the chunk's rows of its fold
                specs.append([_chunk_spec(fold_dir, md5, rows, len(specs), self.count, self.path, self.p,
                                          fold=(k, self.folds, folds)) for k, (fold_dir, md5) in enumerate(teacher)])
            else:
                specs.append(_chunk_spec(*teacher, rows, len(specs), self.count, self.path, self.p))
        self.count += len(rows)

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                if self._rows or self._writer is None:
                    self._flush(len(self._rows))  # the last, short chunk (or an empty file with its schema)
                self._writer.close()
                self._writer = None
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.path)
        finally:
            if self._writer is not None:
                self._writer.close()
            self._tmp.unlink(missing_ok=True)


def write_chunk_texts(texts: list, cache: Path, chunk_rows: int) -> Path:
    """All rows to score at once (see `ChunkedRows`, which the stage uses to stream them)."""
    with ChunkedRows(cache, chunk_rows, [], None) as rows:
        rows.add(list(texts), train=False)
    return rows.path


def plan_chunks(model_dir: Path, teacher_md5: str, texts: list[str], texts_file: Path, p: Params) -> list[dict]:
    """One spec per chunk of `texts` (the stage plans them as it writes the rows: `ChunkedRows`)."""
    size = p.soft_targets.chunk_rows
    return [_chunk_spec(model_dir, teacher_md5, texts[start:start + size], group, start, texts_file, p)
            for group, start in enumerate(range(0, len(texts), size))]


def _chunk_spec(model_dir: Path, teacher_md5: str, rows: list, group: int, start: int, texts_file: Path,
                p: Params, fold: tuple[int, int, list[int]] | None = None) -> dict:
    """A chunk's spec (plain values: they travel to Dask workers and into Prefect task runs).
    Its file name is the md5 of everything that determines its logits. `fold`: (k, K, the rows'
    folds) for fold teacher k, which scores only the chunk's rows of fold k."""
    h = hashlib.md5(f"{CHUNK_FORMAT}\0{teacher_md5}\0{p.data.max_length}\0{p.data.truncation}\0{start}\0".encode())
    for t in rows:
        for part in (t if isinstance(t, tuple) else (t,)):
            h.update(part.encode())
            h.update(b"\0")
        h.update(b"\1")
    extra = {}
    if fold is not None:
        k, k_folds, folds = fold
        h.update(f"fold {k} of {k_folds}\0".encode() + np.asarray(folds, dtype=np.int16).tobytes())
        extra = {"fold": k, "fold_rows": sum(1 for f in folds if f == k)}
    return {"model_dir": str(model_dir), "teacher_md5": teacher_md5, "texts_file": str(texts_file),
            "row_group": group, "start": start, "rows": len(rows),
            "max_length": p.data.max_length, "truncation": p.data.truncation,
            "threads": p.soft_targets.threads(p.base.threads), **extra,
            "out": str(texts_file.parent / f"{teacher_md5[:12]}-{start:010d}-{h.hexdigest()}.parquet")}


def chunk_files(spec: dict | list[dict]) -> list[dict]:
    """The specs of the files one chunk of one teacher is computed into (K for fold teachers)."""
    return spec if isinstance(spec, list) else [spec]


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
    at = np.arange(len(texts))
    if "fold" in spec:  # a fold teacher: only the rows of its fold
        at = np.flatnonzero(group.column("fold").to_numpy() == spec["fold"])
        texts = [texts[i] for i in at]
    clf = _LOADED[key]
    logits = np.asarray(clf.predict_logits(texts, batch_size=64), dtype=np.float32) if texts else \
        np.zeros((0, len(_teacher_labels(Path(spec["model_dir"])))), np.float32)
    table = pa.table({"row": pa.array(spec["start"] + at, pa.int64()),
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
    parts = [read_chunk(spec, n_labels) for spec in specs]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, n_labels), np.float32)


def read_chunk(spec: dict | list[dict], n_labels: int) -> np.ndarray:
    """One chunk's logits [rows, n_labels], checked against its spec (for fold teachers, a list:
    each file's rows put back in their places)."""
    import pyarrow.parquet as pq

    if isinstance(spec, list):
        out, filled = np.zeros((spec[0]["rows"], n_labels), np.float32), np.zeros(spec[0]["rows"], bool)
        for part in spec:
            table = pq.read_table(part["out"])
            at = table.column("row").to_numpy() - part["start"]
            if len(at) != part["fold_rows"] or (len(at) and (at.min() < 0 or at.max() >= len(out))) or filled[at].any():
                raise RuntimeError(f"{part['out']}: holds {len(at)} rows of fold {part['fold']}, expected "
                                   f"{part['fold_rows']} from row {part['start']}")
            out[at], filled[at] = _logit_columns(table, n_labels), True
        if not filled.all():
            raise RuntimeError(f"{spec[0]['texts_file']}: row group {spec[0]['row_group']}: "
                               f"{int((~filled).sum())} rows in no fold's chunk")
        return out
    table = pq.read_table(spec["out"])
    rows = table.column("row").to_numpy()
    if len(rows) != spec["rows"] or (len(rows) and rows[0] != spec["start"]):
        raise RuntimeError(f"{spec['out']}: holds rows {rows[:1]}.. ({len(rows)}), expected {spec['rows']} "
                           f"from {spec['start']}")
    return _logit_columns(table, n_labels)


def _logit_columns(table, n_labels: int) -> np.ndarray:
    return np.stack([table.column(f"logit_{j}").to_numpy() for j in range(n_labels)], axis=1).astype(np.float32)


def write_fused_logits(path: Path, rows_file: Path, specs_by_teacher: list[list[dict]], weights: list[float],
                       temperature: float, n_labels: int) -> list[int]:
    """The teachers' logits, fused chunk by chunk (`fuse_soft_targets` is row-wise), written as one
    .npy file [rows, n_labels] float32 without holding it. Returns, per teacher and then for the
    fused targets, how many training rows (label >= 0) their argmax gets right."""
    import pyarrow.parquet as pq
    import torch

    from distillery.losses import fuse_soft_targets

    n = sum(chunk_files(s)[0]["rows"] for s in specs_by_teacher[0])
    groups = pq.ParquetFile(rows_file)
    correct = [0] * (len(specs_by_teacher) + 1)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": (n, n_labels)})
        for group, chunk in enumerate(zip(*specs_by_teacher)):
            parts = [read_chunk(spec, n_labels) for spec in chunk]
            fused = (fuse_soft_targets([torch.from_numpy(x) for x in parts], weights, temperature).numpy()
                     if len(parts) > 1 else parts[0])
            y = groups.read_row_group(group, columns=["label"]).column("label").to_numpy()
            gold = y >= 0
            for i, logits in enumerate(parts + [fused]):
                correct[i] += int((logits[gold].argmax(1) == y[gold]).sum())
            fh.write(np.ascontiguousarray(fused, dtype=np.float32).tobytes())
    return correct


def prune_chunks(cache: Path, keep: list[dict]) -> None:
    """Drop chunk files of earlier data, teachers or chunk sizes: the cache holds this run's only."""
    wanted = {Path(f["out"]).name for s in keep for f in chunk_files(s)} | {CHUNK_TEXTS}
    for f in cache.glob("*.parquet"):
        if f.name not in wanted:
            f.unlink(missing_ok=True)
