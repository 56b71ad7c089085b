"""The distillation set as distill and prune read it, in bounded memory: its rows on disk (read in
row groups), the teacher logits memory-mapped, the token ids in a memory-mapped store
(distillery/token_store.py) that lives beside the stage's output while it trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common import StageContext


def open_distill_set(ctx: StageContext):
    """The distillation set without loading it (bounded memory, for distill and prune): (its rows
    as `data.SplitInputs`, read in batches; their labels, -1 for augmented texts; the teacher
    logits memory-mapped from logits.npy, read a batch's rows at a time)."""
    from distillery.data import SplitInputs
    from tasks.soft_targets import LOGITS_FILE, SET_FILE

    d = ctx.path(ctx.params.paths.logits_dir)
    rows, logits = SplitInputs(d / SET_FILE), np.load(d / LOGITS_FILE, mmap_mode="r", allow_pickle=False)
    if len(logits) != len(rows):
        raise ValueError(f"{d}: {len(rows)} texts but {len(logits)} rows of teacher logits; "
                         "run `dvc repro -f soft_targets`")
    return rows, rows.labels(), logits


def tokenized(ctx: StageContext, tokenizer, rows, out_dir: Path):
    """`rows` (a `data.SplitInputs`) tokenized into a `token_store.TokenStore` in a temp folder
    beside `out_dir` (`token_store.temp_token_store`): a context manager; the folder is removed
    when the block ends."""
    from distillery.token_store import temp_token_store

    p = ctx.params
    return temp_token_store(out_dir, tokenizer, rows.batches(), p.data.max_length, p.data.truncation)
