"""The models our student competes with, built with the pipeline's own code.

B: the fine-tuned teacher through ONNX Runtime dynamic int8 (what an Optimum / ORT user
   does instead of distilling): the same export and quantization as the quantize stage.
C: the teacher with torch.ao.quantization.quantize_dynamic (int8 Linear layers, fp32
   embeddings): the PyTorch-only alternative (recipe in bench/torch_int8.py).
D: a student of the same shape as ours (same layers, width and trimmed vocabulary, built by
   the same `student.build_student`), trained on the hard labels only, with no teacher:
   the baseline that tells whether distillation helps (D-int8: the same through ORT int8,
   to compare like for like with the final model).

D starts from the *pretrained* source model (`teacher.model` before fine-tuning, the same
layers `student.layers`, a fresh head) rather than from the fine-tuned teacher's layers,
which would carry what the teacher learnt on SST-2 into the "no teacher" baseline. It
trains with the distill stage's rows, epochs, batch size, learning rate and seed, with
alpha = 1 (plain cross-entropy).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

from distillery.encoding import input_meta
from distillery.losses import get_loss
from distillery.modeling import LABELS_FILE, META_FILE, count_parameters, load_teacher, read_meta, save_model_dir
from distillery.student import build_student
from distillery.quantization import export_onnx, quantize_dynamic_int8
from distillery.training import TrainSpec, encode_texts, seed_everything, train
from tasks.common import StageContext
from tasks.models import load_splits

def write_onnx_int8_dir(model, tokenizer, src_dir: Path, out_dir: Path, ctx: StageContext) -> dict:
    """Export `model` to ONNX and quantize it as the quantize stage does; a directory
    `OnnxClassifier.from_dir` loads. Returns timings."""
    p, q = ctx.params, ctx.params.quantize
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        start = time.perf_counter()
        pairs = p.data.text_pair_column is not None
        fp32 = export_onnx(model, Path(tmp) / "model.fp32.onnx", q.opset, p.data.max_length,
                           sep_token_id=tokenizer.sep_token_id if pairs else None)
        exported = time.perf_counter()
        quantize_dynamic_int8(fp32, out_dir / "model.onnx", q.per_channel)
        done = time.perf_counter()
    tokenizer.save_pretrained(out_dir)
    shutil.copy(Path(src_dir) / LABELS_FILE, out_dir / LABELS_FILE)
    meta = {**read_meta(src_dir), "format": "onnx", "quantization": q.model_dump()}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return {"export_seconds": exported - start, "quantize_seconds": done - exported}


def train_hard_label_student(ctx: StageContext, out_dir: Path) -> dict:
    """Baseline D (see the module docstring). Returns its training figures."""
    p, d = ctx.params, ctx.params.distill
    train_set, _, labels = load_splits(ctx)
    seed_everything(p.base.seed)  # the fresh head is initialised from the seed, as the teacher's was
    source, tokenizer, identity = load_teacher(p.teacher.model, labels, ctx.root)
    rows = slice(0, d.max_train_rows)
    inputs = train_set.inputs[rows]  # texts, or (text, text_pair) tuples
    # The same builder as the distill stage (layers, width, vocabulary from the same training rows;
    # augmented texts are not used: they have no gold labels).
    built = build_student(source, tokenizer, p.student, inputs, p.data.max_length, p.base.seed,
                          truncation=p.data.truncation)
    student, tokenizer = built.model, built.tokenizer
    del source
    enc = encode_texts(tokenizer, inputs, p.data.max_length, p.data.truncation)
    loss = partial(get_loss(d.loss), temperature=d.temperature, alpha=1.0)  # alpha = 1: hard labels only
    result = train(student, enc, train_set.labels[rows],
                   TrainSpec.from_section(d, p.base, loss, "baseline D (hard labels)"))
    student.to("cpu")
    save_model_dir(student, tokenizer, labels, out_dir, {
        **input_meta(p.data), "role": "baseline_hard_labels", "init": identity,
        "teacher_layers": p.student.layers, "student": built.info})
    return {"train": vars(result), "params": count_parameters(student), "init": identity["name"]}
