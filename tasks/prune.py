"""Stage prune: remove the least important attention heads and FFN neurons, then recover with KD."""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from distillery.config import Params
from tasks.common import StageContext, StageIO, report_rel, write_report


def io(p: Params) -> StageIO:
    return StageIO(deps=[p.paths.validated_dir, p.paths.student_dir, p.paths.logits_dir],
                   outs=[p.paths.pruned_dir], metrics=[report_rel(p, "prune")],
                   params=["base", "data.max_length", "distill", "prune", "measure"])


def run(ctx: StageContext) -> dict:
    import torch

    from distillery.losses import get_loss
    from distillery.modeling import count_parameters, load_model_dir, save_model_dir
    from distillery.pruning import apply_pruning, compute_importance, plan_pruning
    from distillery.training import collate, encode_texts, iter_batches, resolve_device, train
    from tasks.models import load_logits, load_splits, measure_torch_model

    p, pr, d = ctx.params, ctx.params.prune, ctx.params.distill
    device = resolve_device(p.base.device)
    train_set, eval_set, labels = load_splits(ctx)
    model, tokenizer, _, meta = load_model_dir(ctx.path(p.paths.student_dir))
    model.to(device)
    teacher_logits = load_logits(ctx, "train")
    rows = slice(0, d.max_train_rows)
    enc = encode_texts(tokenizer, train_set.texts[rows], p.data.max_length)
    y, t = train_set.labels[rows], teacher_logits[rows]
    kd = partial(get_loss(d.loss), temperature=d.temperature, alpha=d.alpha)

    # Importance is scored on the same KD objective the model is trained with.
    rng = np.random.default_rng(p.base.seed)
    batches = []
    for i, idx in enumerate(iter_batches(len(enc), d.batch_size, rng)):
        if i == pr.importance_batches:
            break
        b = collate(enc, idx, device)
        b["labels"] = torch.as_tensor(y[idx], device=device)
        b["teacher_logits"] = torch.as_tensor(t[idx], device=device)
        batches.append(b)

    def loss_fn(m, b):
        logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return kd(logits, b["teacher_logits"], b["labels"])

    before = count_parameters(model)
    start = time.perf_counter()
    plan = plan_pruning(compute_importance(model, batches, loss_fn), pr.head_fraction, pr.ffn_fraction)
    importance_seconds = time.perf_counter() - start
    apply_pruning(model, plan)
    after = count_parameters(model)
    structure = dict(model.config.distillery_structure)
    print(f"prune: heads per layer {structure['heads']}, FFN neurons per layer {structure['intermediate']}: "
          f"{before:,} -> {after:,} parameters")
    info = {"structure": structure, "params_before": before, "importance_seconds": importance_seconds}
    if pr.recovery_epochs > 0:
        result = train(model, enc, y, loss_fn=kd, epochs=pr.recovery_epochs, batch_size=d.batch_size,
                       learning_rate=pr.learning_rate, seed=p.base.seed + 1, device=device,
                       teacher_logits=t, desc="prune recovery")
        info["train"] = vars(result)
    out = ctx.path(p.paths.pruned_dir)
    save_model_dir(model, tokenizer, labels, out, {**meta, "role": "pruned", "structure": structure})
    report = {**measure_torch_model(ctx, model, tokenizer, eval_set, len(labels), out), **info}
    write_report(ctx, "prune", report)
    return report
