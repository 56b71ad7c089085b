"""Stage prune: drop layers (optional), then remove the least important attention heads and FFN
neurons in `prune.steps` steps, each followed by KD recovery. A BiLSTM student passes through
unchanged (the report says so)."""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from tasks.common import StageContext, write_report


def pass_through(ctx: StageContext, model, tokenizer, labels: list[str], meta: dict, eval_set) -> dict:
    """A BiLSTM student has no heads or FFN neurons to remove: it is saved unchanged."""
    from distillery.modeling import count_parameters, save_model_dir
    from tasks.models import measure_torch_model

    reason = "not applicable: a BiLSTM student has no attention heads or FFN neurons; saved unchanged"
    print(f"prune: {reason}")
    n = count_parameters(model)
    out = ctx.path(ctx.params.paths.pruned_dir)
    save_model_dir(model, tokenizer, labels, out, {**meta, "role": "pruned", "pruning": reason})
    report = {**measure_torch_model(ctx, model, tokenizer, eval_set, len(labels), out),
              "pruning": reason, "params_before": n, "steps": [], "importance_seconds": 0.0, "train": {"seconds": 0.0}}
    write_report(ctx, "prune", report)
    return report


def run(ctx: StageContext) -> dict:
    from distillery.data import load_split
    from distillery.modeling import load_model_dir
    from distillery.training import resolve_device
    from tasks.models import checked_validated
    from tasks.distill_data import open_distill_set, tokenized

    p = ctx.params
    device = resolve_device(p.base.device)
    vdir, labels = checked_validated(ctx)
    eval_set = load_split(vdir / "eval.parquet")
    model, tokenizer, _, meta = load_model_dir(ctx.path(p.paths.student_dir))
    if getattr(model.config, "model_type", None) == "bilstm":
        return pass_through(ctx, model, tokenizer, labels, meta, eval_set)
    model.to(device)
    data, y, t = open_distill_set(ctx)  # bounded memory, as in distill: rows on disk, logits memory-mapped
    with tokenized(ctx, tokenizer, data, ctx.path(p.paths.pruned_dir)) as enc:
        return _prune(ctx, model, tokenizer, labels, meta, eval_set, enc, y, t, device)


def _prune(ctx: StageContext, model, tokenizer, labels, meta, eval_set, enc, y, t, device) -> dict:
    import torch

    from distillery.losses import get_loss
    from distillery.modeling import count_parameters, save_model_dir
    from distillery.pruning import (apply_pruning, compute_importance, current_structure, drop_layers, plan_pruning,
                                    step_fractions)
    from distillery.training import TrainSpec, collate, is_main_process, iter_batches, train
    from tasks.models import measure_torch_model

    p, pr, d = ctx.params, ctx.params.prune, ctx.params.distill
    kd = partial(get_loss(d.loss), temperature=d.temperature, alpha=d.alpha)

    def loss_fn(m, b):  # importance is scored on the same KD objective the model trains with
        logits = m(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}).logits
        return kd(logits, b["teacher_logits"], b["labels"])

    def scoring_batches(step: int) -> list[dict]:
        rng = np.random.default_rng(p.base.seed + step)
        out = []
        for _, idx in zip(range(pr.importance_batches), iter_batches(len(enc), d.batch_size, rng)):
            b = collate(enc, idx, device)
            b["labels"] = torch.as_tensor(y[idx], device=device)
            b["teacher_logits"] = torch.as_tensor(np.asarray(t[idx], dtype=np.float32), device=device)
            out.append(b)
        return out

    before = count_parameters(model)
    info: dict = {"params_before": before, "steps": [], "dropped_layers": pr.drop_layers}
    if pr.drop_layers:
        drop_layers(model, pr.drop_layers)
    importance_seconds = 0.0
    for step, (hf, ff) in enumerate(zip(step_fractions(pr.head_fraction, pr.steps),
                                        step_fractions(pr.ffn_fraction, pr.steps))):
        start = time.perf_counter()
        plan = plan_pruning(compute_importance(model, scoring_batches(step), loss_fn), hf, ff)
        importance_seconds += time.perf_counter() - start
        apply_pruning(model, plan)
        structure = current_structure(model)
        print(f"prune step {step + 1}/{pr.steps}: heads per layer {structure['heads']}, FFN neurons per layer "
              f"{structure['intermediate']}: {count_parameters(model):,} parameters")
        record = {"structure": structure, "params": count_parameters(model)}
        if pr.recovery_epochs > 0:
            spec = TrainSpec.from_section(d, p.base, kd, f"prune recovery {step + 1}/{pr.steps}",
                                          epochs=pr.recovery_epochs, learning_rate=pr.learning_rate,
                                          seed=p.base.seed + 1 + step)
            result = train(model, enc, y, spec, teacher_logits=t)
            record["train"] = vars(result)
        info["steps"].append(record)
    structure = dict(model.config.distillery_structure)
    info.update(structure=structure, importance_seconds=importance_seconds,
                train={"seconds": sum(s.get("train", {}).get("seconds", 0.0) for s in info["steps"])})
    if not is_main_process():  # under `accelerate launch`, the first rank saves and measures
        return info
    out = ctx.path(p.paths.pruned_dir)
    model.to("cpu")
    save_model_dir(model, tokenizer, labels, out, {**meta, "role": "pruned", "structure": structure})
    report = {**measure_torch_model(ctx, model, tokenizer, eval_set, len(labels), out), **info}
    write_report(ctx, "prune", report)
    return report
