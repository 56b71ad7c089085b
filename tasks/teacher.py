"""Stage teacher: load the teacher (fine-tune it if it has no head for the labels) and measure it.
Its soft targets for distillation are the soft_targets stage's job."""

from __future__ import annotations

import numpy as np

from tasks.common import StageContext, write_report


def run(ctx: StageContext) -> dict:
    from distillery.encoding import check_max_length, input_meta
    from distillery.losses import hinton_kd
    from distillery.modeling import load_teacher, needs_finetune, save_model_dir
    from distillery.training import TrainSpec, encode_texts, resolve_device, train
    from tasks.models import load_splits, measure_torch_model

    p, t = ctx.params, ctx.params.teacher
    train_set, eval_set, labels = load_splits(ctx)
    model, tokenizer, identity = load_teacher(t.model, labels, ctx.root)
    check_max_length(p.data.max_length, model.config, tokenizer, t.model)
    resolve_device(p.base.device)  # base.device: cuda without a GPU fails here, before any work
    enc = encode_texts(tokenizer, train_set.inputs, p.data.max_length, p.data.truncation)
    info = {"identity": identity, "finetuned": False}
    if needs_finetune(t.finetune, identity["has_head"], t.model):
        rows = np.arange(len(train_set))[: t.max_train_rows]
        sub = type(enc)([enc.input_ids[i] for i in rows], enc.pad_id,
                        None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in rows])
        print(f"teacher: fine-tuning {identity['name_or_path']} on {len(rows)} rows for {t.epochs} epoch(s)")
        spec = TrainSpec.from_section(t, p.base, lambda s, _t, y: hinton_kd(s, None, y, 1.0, 1.0), "teacher")
        result = train(model, sub, train_set.labels[rows], spec)
        info.update(finetuned=True, train=vars(result))
    out = ctx.path(p.paths.teacher_dir)
    save_model_dir(model, tokenizer, labels, out, {**input_meta(p.data), "role": "teacher", "identity": identity})
    figures = measure_torch_model(ctx, model, tokenizer, eval_set, len(labels), out)
    report = {**figures, **info}
    write_report(ctx, "teacher", report)
    return report
