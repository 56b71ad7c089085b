"""Stage quantize: export the pruned model to ONNX, fuse the fp32 graph, build the quantized
variant(s) `quantize.method` asks for (choosing among candidates on training rows for
onnx_select), and evaluate the chosen model through ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tasks.common import StageContext, write_report


def ort_fusable(model) -> bool:
    """Whether ORT's BERT graph fusions suit this model (a BiLSTM student: as before, yes)."""
    from distillery.architectures import ADAPTERS

    adapter = ADAPTERS.get(getattr(model.config, "model_type", None))
    return adapter.ort_fusion if adapter is not None else True


def training_rows(ctx: StageContext):
    """(calibration inputs, (selection inputs, their labels), whether inputs are pairs, the eval
    split, label names). Calibration and selection rows come from the training split only (the eval
    split is the gate's), and only those rows are read from it: never the whole split."""
    import numpy as np

    from distillery.data import SplitInputs, load_split
    from distillery.quant_select import split_training_rows
    from tasks.models import checked_validated

    p, q = ctx.params, ctx.params.quantize
    d, labels = checked_validated(ctx)
    train = SplitInputs(d / "train.parquet")
    calib_idx, sel_idx = split_training_rows(len(train), q.calibration_rows, q.selection_rows, p.base.seed)
    taken = train.take(np.concatenate([calib_idx, sel_idx]))  # one pass over the file for both sets
    calib, selection = taken[: len(calib_idx)], (taken[len(calib_idx):], train.labels()[sel_idx])
    return calib, selection, train.pairs, load_split(d / "eval.parquet"), labels  # inputs: texts or (text, pair)


def run(ctx: StageContext) -> dict:
    from distillery.fileio import temp_dir_for
    from distillery.measure import measure_predictor
    from distillery.modeling import LABELS_FILE, META_FILE, count_parameters, load_model_dir, replace_dir
    from distillery.onnx_model import OnnxClassifier
    from distillery.quant_select import BuildInputs, build_and_select
    from distillery.quantization import export_onnx, optimize_fp32_graph
    from distillery.training import encode_texts

    p, q = ctx.params, ctx.params.quantize
    calib_texts, selection, pairs, eval_set, labels = training_rows(ctx)
    src = ctx.path(p.paths.pruned_dir)
    model, tokenizer, _, meta = load_model_dir(src)
    out = ctx.path(p.paths.quantized_dir)
    tmp = temp_dir_for(out)  # the candidates' scratch space; the chosen one is swapped in as `out`

    def package(d: Path) -> None:
        tokenizer.save_pretrained(d)
        shutil.copy(src / LABELS_FILE, d / LABELS_FILE)
        if (src / META_FILE).exists():  # inputs (columns, max_length, truncation) as the candidate is served
            shutil.copy(src / META_FILE, d / META_FILE)

    try:
        start = time.perf_counter()
        exported = export_onnx(model, tmp / "model.exported.onnx", q.opset, p.data.max_length,
                               sep_token_id=tokenizer.sep_token_id if pairs else None)
        fp32 = optimize_fp32_graph(exported, tmp / "model.fp32.onnx", q.graph_optimization, fusable=ort_fusable(model))
        export_seconds = time.perf_counter() - start
        ids = encode_texts(tokenizer, calib_texts, p.data.max_length, p.data.truncation).input_ids
        inputs = BuildInputs(q.per_channel, q.int4_block_size, q.calibration_method, ids,
                             tokenizer.pad_token_id or 0)
        chosen, selection_report = build_and_select(
            fp32, tmp / "variants", q, inputs, package=package,
            load=lambda d: OnnxClassifier.from_dir(d, threads=p.base.threads), selection=selection,
            measure=p.measure)
        quantize_seconds = time.perf_counter() - start - export_seconds
        (chosen / META_FILE).write_text(json.dumps({**meta, "role": "quantized", "format": "onnx",
                                                    "quantization": {**q.model_dump(),
                                                                     "variant": selection_report["variant"]}},
                                                   indent=2, sort_keys=True))
        replace_dir(chosen, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    clf = OnnxClassifier.from_dir(out, threads=p.base.threads)
    n_params = count_parameters(model)  # the same weights, now stored in fewer bits
    figures = measure_predictor(clf, eval_set.inputs, eval_set.labels, len(labels), p.measure, model_dir=out,
                                n_params=n_params)
    report = {**figures, "runtime": "onnxruntime", "quantization": q.model_dump(), "selection": selection_report,
              "export_seconds": export_seconds, "quantize_seconds": quantize_seconds,
              "measure_seconds": time.perf_counter() - start}
    write_report(ctx, "quantize", report)
    return report
