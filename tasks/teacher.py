"""Stage teacher: load the teacher (fine-tune it if it has no head for the labels), measure it,
and cache its logits on train and eval once, for distillation and pruning recovery."""

from __future__ import annotations

import time

import numpy as np

from distillery.config import Params
from tasks.common import StageContext, StageIO, report_rel, write_report


def io(p: Params) -> StageIO:
    return StageIO(deps=[p.paths.validated_dir], outs=[p.paths.teacher_dir, p.paths.logits_dir],
                   metrics=[report_rel(p, "teacher")],
                   params=["base", "data.max_length", "teacher", "measure", "distill.max_train_rows"])


def run(ctx: StageContext) -> dict:
    from distillery.losses import hinton_kd
    from distillery.modeling import load_teacher, needs_finetune, save_model_dir
    from distillery.training import encode_texts, predict_logits, resolve_device, train
    from tasks.models import load_splits, measure_torch_model

    p, t = ctx.params, ctx.params.teacher
    train_set, eval_set, labels = load_splits(ctx)
    model, tokenizer, identity = load_teacher(t.model, labels, ctx.root)
    device = resolve_device(p.base.device)
    enc = encode_texts(tokenizer, train_set.texts, p.data.max_length)
    info = {"identity": identity, "finetuned": False}
    if needs_finetune(t.finetune, identity["has_head"], t.model):
        rows = np.arange(len(train_set))[: t.max_train_rows]
        sub = type(enc)([enc.input_ids[i] for i in rows], enc.pad_id)
        print(f"teacher: fine-tuning {identity['name_or_path']} on {len(rows)} rows for {t.epochs} epoch(s)")
        result = train(model, sub, train_set.labels[rows], epochs=t.epochs, batch_size=t.batch_size,
                       learning_rate=t.learning_rate, seed=p.base.seed, device=device,
                       loss_fn=lambda s, _t, y: hinton_kd(s, None, y, 1.0, 1.0), desc="teacher")
        info.update(finetuned=True, train=vars(result))
    out = ctx.path(p.paths.teacher_dir)
    save_model_dir(model, tokenizer, labels, out, {"max_length": p.data.max_length, "role": "teacher",
                                                   "identity": identity})
    # Teacher logits, computed once per dataset: distill and prune read them from disk. Only the
    # rows they train on (the first distill.max_train_rows) are scored.
    start = time.perf_counter()
    logits_dir = ctx.path(p.paths.logits_dir)
    logits_dir.mkdir(parents=True, exist_ok=True)
    used = type(enc)(enc.input_ids[: p.distill.max_train_rows], enc.pad_id)
    train_logits = predict_logits(model, used, 64, device, desc="teacher logits")
    np.save(logits_dir / "train.npy", train_logits, allow_pickle=False)
    info["logits_seconds"] = time.perf_counter() - start
    figures = measure_torch_model(ctx, model, tokenizer, eval_set, len(labels), out)
    report = {**figures, **info}
    write_report(ctx, "teacher", report)
    return report
