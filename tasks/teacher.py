"""Stage teacher: load the teacher (fine-tune it if it has no head for the labels) and measure it.
Its soft targets for distillation are the soft_targets stage's job.

Bounded memory: a teacher that is not fine-tuned reads no training row; one that is reads the first
`teacher.max_train_rows` rows (all when null), streamed, into a memory-mapped token
store beside its output (distillery/token_store.py), and trains from the store batch by batch."""

from __future__ import annotations

from tasks.common import StageContext, write_report


def run(ctx: StageContext) -> dict:
    from distillery.data import SplitInputs, load_split
    from distillery.encoding import check_max_length, input_meta
    from distillery.modeling import load_teacher, needs_finetune, save_model_dir
    from distillery.training import resolve_device
    from tasks.models import checked_validated, measure_torch_model

    p, t = ctx.params, ctx.params.teacher
    d, labels = checked_validated(ctx)
    eval_set = load_split(d / "eval.parquet")
    model, tokenizer, identity = load_teacher(t.model, labels, ctx.root)
    check_max_length(p.data.max_length, model.config, tokenizer, t.model)
    resolve_device(p.base.device)  # base.device: cuda without a GPU fails here, before any work
    info = {"identity": identity, "finetuned": False}
    out = ctx.path(p.paths.teacher_dir)
    if needs_finetune(t.finetune, identity["has_head"], t.model):
        rows = SplitInputs(d / "train.parquet", limit=t.max_train_rows)
        print(f"teacher: fine-tuning {identity['name_or_path']} on {len(rows)} rows for {t.epochs} epoch(s)")
        info.update(finetuned=True, train=vars(finetune(ctx, model, tokenizer, rows, out)))
    save_model_dir(model, tokenizer, labels, out, {**input_meta(p.data), "role": "teacher", "identity": identity})
    figures = measure_torch_model(ctx, model, tokenizer, eval_set, len(labels), out)
    report = {**figures, **info}
    write_report(ctx, "teacher", report)
    return report


def finetune(ctx: StageContext, model, tokenizer, rows, out):
    """Train the teacher's head (and encoder) on `rows` (a `data.SplitInputs`) with cross-entropy,
    from their token ids in a temp store beside `out`, removed after training."""
    from distillery.losses import hinton_kd
    from distillery.token_store import temp_token_store
    from distillery.training import TrainSpec, train

    p, t = ctx.params, ctx.params.teacher
    spec = TrainSpec.from_section(t, p.base, lambda s, _t, y: hinton_kd(s, None, y, 1.0, 1.0), "teacher")
    with temp_token_store(out, tokenizer, rows.batches(), p.data.max_length, p.data.truncation) as store:
        return train(model, store, rows.labels(), spec)
