"""Stage teacher_folds: with `teacher.cross_fit_folds: K` (K >= 2), fine-tune K fold teachers from
`teacher.model` with the teacher's own recipe (epochs, batch size, learning rate, rows), fold
teacher k on every training row outside fold k (distillery/folds.py). The soft_targets stage then
scores each row, and each augmented copy of it, with the fold teacher that did not see it.

With K = 0 (the default) it only records that cross-fitting is off: one small manifest, no model.
It is a stage of its own, beside the teacher's, so changing K re-runs it and the stages after it,
not the teacher's fine-tuning. It refuses a teacher this project does not fine-tune (a classifier
that already has a head, under `teacher.finetune: auto`): there is nothing to hold out from it.

Memory: the training rows stream as in the teacher stage; each row's fold is 2 bytes. The K fold
teachers are written into one folder, swapped in whole when the last is done, so a killed run
leaves the previous folder (or none), never some fold teachers of one run and some of another.
"""

from __future__ import annotations

import time

from tasks.common import StageContext, write_report

USES_TORCH = False  # off (the default), the stage imports no torch (saves ~3 s); on, `run` sets it up


def run(ctx: StageContext) -> dict:
    from distillery.fileio import atomic_dir
    from distillery.folds import write_manifest

    p, t = ctx.params, ctx.params.teacher
    k_folds, out = t.cross_fit_folds, ctx.path(p.paths.teacher_folds_dir)
    manifest = {"folds": k_folds, "seed": p.base.seed, "teachers": []}
    if not k_folds:
        with atomic_dir(out) as tmp:
            write_manifest(tmp, manifest)
        write_report(ctx, "teacher_folds", {"folds": 0})
        return {"folds": 0}

    import numpy as np
    import torch

    from distillery.config import ConfigError
    from distillery.data import SplitInputs
    from distillery.folds import OutOfFold, row_folds
    from distillery.modeling import load_teacher, needs_finetune, save_model_dir
    from distillery.training import seed_everything
    from tasks.models import checked_validated
    from tasks.teacher import finetune

    torch.set_num_threads(p.base.threads)  # what stage_context does for the stages that always train
    d, labels = checked_validated(ctx)
    model, tokenizer, identity = load_teacher(t.model, labels, ctx.root)
    if not needs_finetune(t.finetune, identity["has_head"], t.model):
        raise ConfigError(f"params.yaml: teacher.cross_fit_folds is {k_folds}, but {t.model!r} already has a "
                          "classification head and is not fine-tuned here (teacher.finetune: "
                          f"{t.finetune}), so there are no training rows to hold out from it; "
                          "set teacher.cross_fit_folds to 0")
    del model
    rows = SplitInputs(d / "train.parquet", limit=t.max_train_rows)
    folds = np.concatenate([row_folds(b, k_folds, p.base.seed) for b in rows.batches()] or
                           [np.zeros(0, np.int16)])
    sizes = np.bincount(folds, minlength=k_folds).tolist()
    if min(sizes) == 0:
        raise ConfigError(f"params.yaml: teacher.cross_fit_folds: {k_folds} folds of {len(rows)} training rows "
                          f"leave a fold empty (rows per fold: {sizes}); use fewer folds")
    fits = []
    with atomic_dir(out) as tmp:
        for k in range(k_folds):
            start = time.perf_counter()
            seed_everything(p.base.seed)  # every fold teacher starts as the teacher did
            model, tokenizer, _ = load_teacher(t.model, labels, ctx.root)
            fit_rows = OutOfFold(rows, folds, k)
            print(f"teacher_folds: fold teacher {k + 1}/{k_folds}: fine-tuning on the {len(fit_rows)} rows "
                  f"outside fold {k} ({sizes[k]} rows) for {t.epochs} epoch(s)")
            name = f"fold-{k}"
            train = finetune(ctx, model, tokenizer, fit_rows, tmp / name)
            save_model_dir(model, tokenizer, labels, tmp / name,
                           {"role": "fold teacher", "fold": k, "folds": k_folds, "seed": p.base.seed,
                            "held_out_rows": sizes[k], "identity": identity})
            manifest["teachers"].append(name)
            fits.append({"fold": k, "held_out_rows": sizes[k], "train_rows": len(fit_rows),
                         "seconds": time.perf_counter() - start, "train": vars(train)})
            del model
        write_manifest(tmp, manifest)
    # "train": the K fine-tunes together, in the teacher report's keys (the benchmark's model-compute time)
    report = {"folds": k_folds, "rows": len(rows), "fold_rows": sizes, "fits": fits,
              "seconds": sum(f["seconds"] for f in fits),
              "train": {"seconds": sum(f["train"]["seconds"] for f in fits),
                        "steps": sum(f["train"]["steps"] for f in fits), "epochs": t.epochs}}
    write_report(ctx, "teacher_folds", report)
    return report
