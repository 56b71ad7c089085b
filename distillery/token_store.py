"""Token ids on disk: a split tokenized in chunks into flat numpy memory maps, so training reads
the rows of each batch and never holds the tokenized split.

Layout (a folder): `ids.int32` (every row's token ids, end to end), `offsets.int64` (row i is
ids[offsets[i]:offsets[i + 1]]) and, for pairs whose model takes them, `types.int8` (segment
ids, aligned with ids). 4 bytes a token plus 8 a row on disk; in memory only the pages of the
rows a batch touches, which the kernel may drop again (clean, file-backed pages).

Why numpy memmap rather than Arrow: the training loop indexes random rows, and a memory map of
a flat array gives a row as a zero-copy slice with no decoding and no reader state, from any
process (accelerate's ranks each map the same files); Arrow/Parquet stays the format of what
travels between stages (splits, distillation set, logit chunks), where columns, schemas and
compression matter. `TokenStore` has the interface of `training.Encoded` (`input_ids[i]`,
`token_type_ids[i]`, `pad_id`, `lengths()`), so `collate`, `train` and `predict_logits` take either.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

IDS, OFFSETS, TYPES = "ids.int32", "offsets.int64", "types.int8"


class _Rows:
    """Row i of a flat array cut by offsets, as a read-only view."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class TokenStore:
    """A tokenized split on disk (see the module doc); open one written by `write_token_store`."""

    def __init__(self, folder: str | Path, pad_id: int):
        folder = Path(folder)
        self.folder, self.pad_id = folder, pad_id
        self.offsets = np.memmap(folder / OFFSETS, dtype=np.int64, mode="r")
        n_tokens = int(self.offsets[-1])
        # np.memmap refuses an empty file: a split of empty rows has no ids to map.
        self._ids = np.memmap(folder / IDS, dtype=np.int32, mode="r") if n_tokens else np.zeros(0, np.int32)
        types = folder / TYPES
        self._types = (np.memmap(types, dtype=np.int8, mode="r") if n_tokens else np.zeros(0, np.int8)) \
            if types.exists() else None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def input_ids(self) -> _Rows:
        return _Rows(self._ids, self.offsets)

    @property
    def token_type_ids(self) -> _Rows | None:
        return None if self._types is None else _Rows(self._types, self.offsets)

    def lengths(self) -> np.ndarray:
        """Tokens per row (int64, 8 bytes a row): all that length-grouped batches need."""
        return np.diff(self.offsets)


def write_token_store(folder: str | Path, tokenizer, batches: Iterable[list], max_length: int,
                      truncation: str = "head") -> TokenStore:
    """Tokenize `batches` (lists of texts or (text, text_pair) tuples) one at a time, as
    `training.encode_texts` does row by row, appending each batch's ids to the store's files."""
    from distillery.training import encode_texts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ends: list[np.ndarray] = []
    total, pad_id, with_types = 0, tokenizer.pad_token_id or 0, None
    with open(folder / IDS, "wb") as ids_fh, open(folder / TYPES, "wb") as types_fh:
        for batch in batches:
            enc = encode_texts(tokenizer, batch, max_length, truncation)
            pad_id = enc.pad_id
            with_types = enc.token_type_ids is not None if with_types is None else with_types
            lengths = np.fromiter((len(r) for r in enc.input_ids), dtype=np.int64, count=len(enc))
            if len(enc):
                ids_fh.write(np.concatenate([np.asarray(r, np.int32) for r in enc.input_ids]).tobytes())
                if with_types:
                    types_fh.write(np.concatenate([np.asarray(r, np.int8) for r in enc.token_type_ids]).tobytes())
            ends.append(total + np.cumsum(lengths))
            total += int(lengths.sum())
    if not with_types:
        (folder / TYPES).unlink()
    offsets = np.concatenate([np.zeros(1, np.int64)] + ends)
    offsets.tofile(folder / OFFSETS)
    return TokenStore(folder, pad_id)


@contextlib.contextmanager
def temp_token_store(beside: str | Path, tokenizer, batches: Iterable[list], max_length: int,
                     truncation: str = "head") -> Iterator[TokenStore]:
    """`write_token_store` into a temp folder beside `beside` (a stage's output: the folder is
    `.NAME.tokens-*`, which `fileio.remove_leftovers` finds after a kill), removed when the block ends."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.tokens-", dir=beside.parent))
    try:
        yield write_token_store(folder, tokenizer, batches, max_length, truncation)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["TokenStore", "temp_token_store", "write_token_store"]
