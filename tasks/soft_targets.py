"""Stage soft_targets: the distillation set (the training rows distillation uses, plus
augmented texts when `augment.copies` > 0) and the teacher's logits on every row of it,
fused with further teachers' when `distill.teachers` lists any.

Computed once per dataset: distill and prune read them from disk, so the teachers never
run inside a training loop (except for the intermediate-layer losses, which need the
main teacher's hidden states). Extra teachers are identified by path in params.yaml
(DVC cannot template a list of directories as deps): after replacing one in place, run
`dvc repro -f soft_targets`; their weights' md5s are recorded in the report.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np

from distillery.config import Params
from tasks.common import StageContext, StageIO, report_rel, write_report

SET_FILE = "distill_set.parquet"
LOGITS_FILE = "logits.npy"


def io(p: Params) -> StageIO:
    return StageIO(deps=[p.paths.validated_dir, p.paths.teacher_dir], outs=[p.paths.logits_dir],
                   metrics=[report_rel(p, "soft_targets")],
                   params=["base", "data.max_length", "data.truncation", "augment", "distill.max_train_rows", "distill.temperature",
                           "distill.teacher_weight", "distill.teachers"])


def _md5(model_dir: Path) -> str:
    h = hashlib.md5()
    for f in sorted(model_dir.iterdir()):
        if f.suffix in (".safetensors", ".onnx"):
            h.update(f.read_bytes())
    return h.hexdigest()


def _classifier(model_dir: Path, max_length: int, threads: int, truncation: str = "head"):
    """A raw-text classifier over any model directory this project writes (PyTorch or ONNX)."""
    from distillery.modeling import ModelLoadError, load_model_dir, read_labels

    if not model_dir.is_dir():
        raise ModelLoadError(f"params.yaml: distill.teachers: {model_dir} is not a model directory")
    if (model_dir / "model.onnx").exists():
        from distillery.onnx_model import OnnxClassifier

        return OnnxClassifier.from_dir(model_dir, threads=threads), read_labels(model_dir)
    from distillery.training import TorchClassifier

    model, tokenizer, labels, _ = load_model_dir(model_dir)
    return TorchClassifier(model, tokenizer, max_length, truncation=truncation), labels


def run(ctx: StageContext) -> dict:
    import torch

    from distillery.augment import augment_texts
    from distillery.data import TextDataset, save_split
    from distillery.losses import fuse_soft_targets
    from distillery.modeling import replace_dir
    from tasks.models import load_splits

    p, a, d = ctx.params, ctx.params.augment, ctx.params.distill
    train_set, _, labels = load_splits(ctx)
    texts, y = train_set.inputs[: d.max_train_rows], train_set.labels[: d.max_train_rows]
    start = time.perf_counter()
    aug, source = augment_texts(texts, a.copies, mask_prob=a.mask_prob, replace_prob=a.replace_prob,
                                ngram_prob=a.ngram_prob, max_ngram=a.max_ngram, seed=p.base.seed)
    augment_seconds = time.perf_counter() - start
    all_texts = list(texts) + aug  # strings, or (text, text_pair) tuples
    all_labels = np.concatenate([y, np.full(len(aug), -1, dtype=np.int64)])  # -1: no gold label
    print(f"soft_targets: {len(texts)} training rows + {len(aug)} augmented ({a.copies} per row)")

    teachers = [(ctx.path(p.paths.teacher_dir), d.teacher_weight)] + [(ctx.path(t.path), t.weight) for t in d.teachers]
    all_logits, info = [], []
    start = time.perf_counter()
    for model_dir, weight in teachers:
        clf, their_labels = _classifier(model_dir, p.data.max_length, p.base.threads, p.data.truncation)
        if [str(x) for x in their_labels] != [str(x) for x in labels]:
            raise ValueError(f"params.yaml: distill.teachers: {model_dir} classifies into {their_labels}, "
                             f"the data into {labels}")
        logits = clf.predict_logits(all_texts, batch_size=64)
        all_logits.append(torch.from_numpy(np.asarray(logits, dtype=np.float32)))
        agree = float((logits[: len(y)].argmax(1) == y).mean()) if len(y) else 0.0
        info.append({"path": str(model_dir.relative_to(ctx.root) if model_dir.is_relative_to(ctx.root) else model_dir),
                     "weight": weight, "md5": _md5(model_dir), "train_accuracy": agree})
        del clf
    fused = (fuse_soft_targets(all_logits, [w for _, w in teachers], d.temperature) if len(teachers) > 1
             else all_logits[0]).numpy()
    logits_seconds = time.perf_counter() - start

    out = ctx.path(p.paths.logits_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # written whole, then swapped in: never half a set
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pairs = train_set.pairs is not None
    save_split(TextDataset([x[0] for x in all_texts] if pairs else all_texts, all_labels,
                           [x[1] for x in all_texts] if pairs else None), tmp / SET_FILE)
    np.save(tmp / LOGITS_FILE, fused.astype(np.float32), allow_pickle=False)
    replace_dir(tmp, out)
    fused_agree = float((fused[: len(y)].argmax(1) == y).mean()) if len(y) else 0.0
    report = {"rows": len(all_texts), "train_rows": len(texts), "augmented_rows": len(aug),
              "teachers": info, "fused_train_accuracy": fused_agree,
              "augment_seconds": augment_seconds, "logits_seconds": logits_seconds}
    write_report(ctx, "soft_targets", report)
    return report
