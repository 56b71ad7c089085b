"""Loading the validated splits and measuring PyTorch models: shared by the training stages."""

from __future__ import annotations

import json
from pathlib import Path

from distillery.measure import measure_predictor
from distillery.modeling import count_parameters
from distillery.training import TorchClassifier, encode_texts, predict_logits, resolve_device
from tasks.common import StageContext


def load_splits(ctx: StageContext):
    """(train, eval, label names) from the validate stage's outputs, after checking that they and
    their source files are exactly what validation passed (else a `DataError` naming the file)."""
    from distillery.data import load_split

    d, labels = checked_validated(ctx)
    return load_split(d / "train.parquet"), load_split(d / "eval.parquet"), labels


def checked_validated(ctx: StageContext) -> tuple[Path, list[str]]:
    """(the validated directory, label names), after `check_validated`: for stages that stream
    the split files (`distillery.data.iter_split`) instead of loading them."""
    from distillery.data import check_validated

    d = ctx.path(ctx.params.paths.validated_dir)
    check_validated(d, ctx.root)
    return d, json.loads((d / "labels.json").read_text())["labels"]


def measure_torch_model(ctx: StageContext, model, tokenizer, eval_set, n_classes: int,
                        model_dir: Path) -> dict:
    """The standard figures for a PyTorch model, timed on the CPU as it would be deployed."""
    import time

    p = ctx.params
    start = time.perf_counter()
    device = resolve_device(p.base.device)
    enc = encode_texts(tokenizer, eval_set.inputs, p.data.max_length, p.data.truncation)
    logits = predict_logits(model, enc, p.measure.throughput_batch_size, device)
    # Latency is a CPU-serving figure, timed on the real eval inputs (pairs, long texts) as served.
    cpu = TorchClassifier(model, tokenizer, p.data.max_length, truncation=p.data.truncation)
    figures = measure_predictor(cpu, eval_set.inputs, eval_set.labels, n_classes, p.measure,
                                model_dir=model_dir, n_params=count_parameters(model), logits=logits)
    model.to(device)
    figures["measure_seconds"] = time.perf_counter() - start
    return figures
