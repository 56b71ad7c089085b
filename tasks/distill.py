"""Stage distill: build the student from teacher layers and train it with knowledge distillation."""

from __future__ import annotations

from functools import partial

from distillery.config import Params
from tasks.common import StageContext, StageIO, report_rel, write_report


def io(p: Params) -> StageIO:
    return StageIO(deps=[p.paths.validated_dir, p.paths.teacher_dir, p.paths.logits_dir],
                   outs=[p.paths.student_dir], metrics=[report_rel(p, "distill")],
                   params=["base", "data.max_length", "student", "distill", "measure"])


def run(ctx: StageContext) -> dict:
    from distillery.losses import get_loss
    from distillery.modeling import build_student_from_layers, count_parameters, load_model_dir, save_model_dir
    from distillery.training import encode_texts, resolve_device, train
    from tasks.models import load_logits, load_splits, measure_torch_model

    p, d = ctx.params, ctx.params.distill
    train_set, eval_set, labels = load_splits(ctx)
    teacher, tokenizer, _, teacher_meta = load_model_dir(ctx.path(p.paths.teacher_dir))
    student = build_student_from_layers(teacher, p.student.layers)
    print(f"distill: student keeps teacher layers {p.student.layers}: "
          f"{count_parameters(student):,} parameters (teacher {count_parameters(teacher):,})")
    del teacher
    teacher_logits = load_logits(ctx, "train")
    rows = slice(0, d.max_train_rows)
    enc = encode_texts(tokenizer, train_set.texts[rows], p.data.max_length)
    loss = partial(get_loss(d.loss), temperature=d.temperature, alpha=d.alpha)
    result = train(student, enc, train_set.labels[rows], loss_fn=loss, epochs=d.epochs,
                   batch_size=d.batch_size, learning_rate=d.learning_rate, seed=p.base.seed,
                   device=resolve_device(p.base.device), teacher_logits=teacher_logits[rows], desc="distill")
    out = ctx.path(p.paths.student_dir)
    save_model_dir(student, tokenizer, labels, out, {"max_length": p.data.max_length, "role": "student",
                                                     "teacher_layers": p.student.layers,
                                                     "teacher": teacher_meta.get("identity")})
    report = {**measure_torch_model(ctx, student, tokenizer, eval_set, len(labels), out), "train": vars(result)}
    write_report(ctx, "distill", report)
    return report
