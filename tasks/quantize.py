"""Stage quantize: export the pruned model to ONNX, quantize it to int8 with ONNX Runtime,
and evaluate the quantized model through ONNX Runtime."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from distillery.config import Params
from tasks.common import StageContext, StageIO, report_rel, write_report


def io(p: Params) -> StageIO:
    return StageIO(deps=[p.paths.validated_dir, p.paths.pruned_dir], outs=[p.paths.quantized_dir],
                   metrics=[report_rel(p, "quantize")],
                   params=["base.threads", "data.max_length", "quantize", "measure"])


def run(ctx: StageContext) -> dict:
    from distillery.measure import measure_predictor
    from distillery.modeling import LABELS_FILE, META_FILE, count_parameters, load_model_dir, replace_dir
    from distillery.onnx_model import OnnxClassifier
    from distillery.quantization import export_onnx, quantize_dynamic_int8
    from tasks.models import load_splits

    p, q = ctx.params, ctx.params.quantize
    _, eval_set, labels = load_splits(ctx)
    src = ctx.path(p.paths.pruned_dir)
    model, tokenizer, _, meta = load_model_dir(src)
    out = ctx.path(p.paths.quantized_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        start = time.perf_counter()
        fp32 = export_onnx(model, tmp / "model.fp32.onnx", q.opset, p.data.max_length)
        export_seconds = time.perf_counter() - start
        quantize_dynamic_int8(fp32, tmp / "model.onnx", q.per_channel)
        quantize_seconds = time.perf_counter() - start - export_seconds
        fp32.unlink()  # the int8 graph is the artifact; the fp32 export is an intermediate
        tokenizer.save_pretrained(tmp)
        shutil.copy(src / LABELS_FILE, tmp / LABELS_FILE)
        (tmp / META_FILE).write_text(json.dumps({**meta, "role": "quantized", "format": "onnx",
                                                 "quantization": q.model_dump()}, indent=2, sort_keys=True))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    clf = OnnxClassifier.from_dir(out, threads=p.base.threads)
    n_params = count_parameters(model)  # the same weights, now stored as int8
    figures = measure_predictor(clf, list(eval_set.texts), eval_set.labels, len(labels), model_dir=out,
                                n_params=n_params, latency_samples=p.measure.latency_samples,
                                warmup=p.measure.warmup, batch_size=p.measure.throughput_batch_size)
    report = {**figures, "runtime": "onnxruntime", "quantization": q.model_dump(),
              "export_seconds": export_seconds, "quantize_seconds": quantize_seconds,
              "measure_seconds": time.perf_counter() - start}
    write_report(ctx, "quantize", report)
    return report

