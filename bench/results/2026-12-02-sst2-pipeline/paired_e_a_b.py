"""E (the final model) against A (the teacher) and B (the teacher through ONNX Runtime dynamic int8)
on SST-2 dev, paired, for the bench project /work/bench-sst2 (built by `distillery bench` at 552ef19).
B is made here with the bench's own builder (bench.baselines.write_onnx_int8_dir)."""
import json, sys
from pathlib import Path
import numpy as np
from bench.baselines import write_onnx_int8_dir
from distillery.modeling import load_model_dir
from distillery.onnx_model import OnnxClassifier
from distillery.stats import paired_comparison
from distillery.training import TorchClassifier
from tasks.common import stage_context
from tasks.models import load_splits

work = Path("/work/bench-sst2")
ctx = stage_context(work)
p = ctx.params
_, ev, labels = load_splits(ctx)
teacher_dir = ctx.path(p.paths.teacher_dir)
model, tok, _, meta = load_model_dir(teacher_dir)
b_dir = work / "baselines" / "B-teacher-ort-int8"
write_onnx_int8_dir(model, tok, teacher_dir, b_dir, ctx)
pred = {"A": TorchClassifier(model, tok, p.data.max_length).predict_logits(ev.inputs).argmax(1),
        "B": OnnxClassifier.from_dir(b_dir, threads=1).predict_logits(ev.inputs).argmax(1),
        "E": OnnxClassifier.from_dir(ctx.path(p.paths.quantized_dir), threads=1).predict_logits(ev.inputs).argmax(1)}
g = p.gate
out = {"what": __doc__, "eval_rows": len(ev.labels),
       "accuracy": {k: float((v == ev.labels).mean()) for k, v in pred.items()}}
for ref in ("A", "B"):
    out[f"E_vs_{ref}"] = paired_comparison(pred["E"], pred[ref], ev.labels, confidence=g.confidence,
                                           resamples=g.bootstrap_resamples, seed=p.base.seed).to_dict()
out["B_vs_A"] = paired_comparison(pred["B"], pred["A"], ev.labels, confidence=g.confidence,
                                  resamples=g.bootstrap_resamples, seed=p.base.seed).to_dict()
Path(sys.argv[1]).write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=1)[:3000])
