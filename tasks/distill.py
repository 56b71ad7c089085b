"""Stage distill: build the student from the teacher (layers, width, vocabulary; or a BiLSTM over
its embeddings) and train it with knowledge distillation on the soft_targets stage's set,
optionally with intermediate-layer (hidden-state and attention) losses against the teacher."""

from __future__ import annotations

import time
from functools import partial

from distillery.config import Params
from tasks.common import StageContext, write_report


def intermediate_loss(params: Params, teacher, built):
    """losses.IntermediateLoss for this student, or None when its weights are 0."""
    from distillery.losses import IntermediateLoss

    d = params.distill
    if d.hidden_weight <= 0 and d.attention_weight <= 0:
        return None
    layer_map = d.layer_map if d.layer_map is not None else params.student.layers
    if max(layer_map) >= teacher.config.num_hidden_layers:
        from distillery.config import ConfigError

        raise ConfigError(f"params.yaml: distill.layer_map: {layer_map} out of range; the teacher has "
                          f"{teacher.config.num_hidden_layers} layers")
    if d.attention_weight > 0:  # attention maps are only returned by the eager implementation
        teacher.set_attn_implementation("eager")
        built.model.set_attn_implementation("eager")
    return IntermediateLoss(teacher, layer_map, d.hidden_weight, d.attention_weight,
                            built.model.config.hidden_size, teacher.config.hidden_size,
                            channels=built.channels, id_map=built.vocab_keep)


def run(ctx: StageContext) -> dict:
    from distillery.data import load_split
    from distillery.encoding import input_meta
    from distillery.losses import get_loss
    from distillery.modeling import count_parameters, load_model_dir, save_model_dir
    from distillery.student import build_student
    from distillery.training import TrainSpec, is_main_process, train
    from tasks.models import checked_validated, measure_torch_model
    from tasks.distill_data import open_distill_set, tokenized

    p, d = ctx.params, ctx.params.distill
    vdir, labels = checked_validated(ctx)
    eval_set = load_split(vdir / "eval.parquet")
    # Bounded memory: the rows stay on disk (read in batches), the logits memory-mapped, the token
    # ids in a memory-mapped store (distillery/token_store.py); held whole: 16 bytes a row (labels, lengths).
    data, y, teacher_logits = open_distill_set(ctx)
    teacher, tokenizer, _, teacher_meta = load_model_dir(ctx.path(p.paths.teacher_dir))
    start = time.perf_counter()
    built = build_student(teacher, tokenizer, p.student, data, p.data.max_length, p.base.seed,
                          truncation=p.data.truncation)
    build_seconds = time.perf_counter() - start
    student = built.model
    print(f"distill: student of {count_parameters(student):,} parameters (teacher {count_parameters(teacher):,}): "
          f"{built.info}")
    attn_implementation = getattr(student.config, "_attn_implementation", None)  # intermediate_loss may set eager
    aux = intermediate_loss(p, teacher, built)
    if aux is None:
        del teacher
    loss = partial(get_loss(d.loss), temperature=d.temperature, alpha=d.alpha)
    spec = TrainSpec.from_section(d, p.base, loss, "distill", aux_loss=aux, aux_epochs=d.intermediate_epochs)
    out = ctx.path(p.paths.student_dir)
    with tokenized(ctx, built.tokenizer, data, out) as enc:
        result = train(student, enc, y, spec, teacher_logits=teacher_logits)
    if not is_main_process():  # under `accelerate launch`, the first rank saves and measures
        return {"train": vars(result)}
    student.to("cpu")
    if aux is not None and aux.needs_attentions:  # back to the default kernels for measuring and export
        student.set_attn_implementation(attn_implementation)
    transformer = p.student.architecture == "transformer"
    save_model_dir(student, built.tokenizer, labels, out, {**input_meta(p.data), "role": "student",
                                                           "teacher_layers": p.student.layers if transformer else None,
                                                           "student": built.info,
                                                           "teacher": teacher_meta.get("identity")})
    report = {**measure_torch_model(ctx, student, built.tokenizer, eval_set, len(labels), out),
              "train": vars(result), "student": built.info, "rows": len(data),
              "build_seconds": build_seconds}
    write_report(ctx, "distill", report)
    return report
