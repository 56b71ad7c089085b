"""Cross-fitting: soft targets that the teacher did not memorise.

A teacher fine-tuned on the training rows learns them almost by heart (on MRPC it gets 97% of its
own training pairs right, against 78% of pairs it has not seen), so its logits on those rows, and on
their augmented copies, are near one-hot and say little about where it is unsure. With
`teacher.cross_fit_folds: K` the teacher stage also fine-tunes K fold teachers, fold teacher k on
every training row outside fold k, and the soft_targets stage scores each row (and each augmented
copy of it) with the fold teacher that never saw it: out-of-fold targets, as in cross-fitting.

A row's fold is a seeded hash of its text (and second text), so equal rows share a fold (a
duplicate cannot leak its label across folds) and the fold of any row is known from the row alone,
while files stream. Fold sizes are near equal, not exact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

MANIFEST = "folds.json"  # in paths.teacher_folds_dir: how many folds, of which rows, which teachers


def row_fold(row: str | tuple, folds: int, seed: int) -> int:
    """The fold (0..folds-1) of one row: a text, or a (text, text_pair) tuple."""
    parts = row if isinstance(row, tuple) else (row,)
    h = hashlib.md5(f"{seed}".encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return int.from_bytes(h.digest(), "big") % folds


def row_folds(rows: list, folds: int, seed: int) -> np.ndarray:
    """Each row's fold, as int16 (2 bytes a row)."""
    return np.fromiter((row_fold(r, folds, seed) for r in rows), dtype=np.int16, count=len(rows))


class OutOfFold:
    """The rows of a `data.SplitInputs` outside one fold: what fold teacher `fold` trains on.
    `folds` holds every row's fold (`row_folds` over the split, in order)."""

    def __init__(self, rows, folds: np.ndarray, fold: int):
        if len(folds) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(folds)} fold ids")
        self.rows, self.folds, self.fold = rows, folds, fold

    def __len__(self) -> int:
        return int((self.folds != self.fold).sum())

    def batches(self) -> Iterator[list]:
        start = 0
        for batch in self.rows.batches():
            mine = self.folds[start:start + len(batch)]
            start += len(batch)
            yield [r for r, f in zip(batch, mine) if f != self.fold]

    def labels(self) -> np.ndarray:
        return self.rows.labels()[self.folds != self.fold]


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def read_manifest(folder: str | Path) -> dict:
    """The teacher stage's record of its fold teachers: {"folds": K, "seed": .., "teachers": [dir names]}
    ({"folds": 0} when cross-fitting is off)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the teacher stage (`dvc repro teacher`)")
    return json.loads(path.read_text())
