"""Prototype: cross-fitted (out-of-fold) soft targets for a selection work folder.
K fold teachers, each fine-tuned from the base teacher on the training rows outside fold k
(fold = md5 of the row's texts), score the distill-set rows whose source row is in fold k
(real rows and their augmented copies). Replaces <work>/data/teacher_logits/logits.npy."""
import hashlib, json, sys, time, shutil
from pathlib import Path
import numpy as np

work, K, base = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
from tasks.common import stage_context
from distillery.data import load_split, save_split, SplitInputs, iter_split
from distillery.augment import augment_batches
from distillery.modeling import load_teacher
from distillery.training import TorchClassifier, seed_everything
from tasks.teacher import finetune

ctx = stage_context(work)
p = ctx.params
train = load_split(work / "data/validated/train.parquet")
labels = json.loads((work / "data/validated/labels.json").read_text())
labels = labels["labels"] if isinstance(labels, dict) else labels
rows = train.inputs
def fold(r):
    key = "\0".join(r) if isinstance(r, tuple) else r
    return int(hashlib.md5(f"{p.base.seed}\0{key}".encode()).hexdigest(), 16) % K
folds = np.array([fold(r) for r in rows])
print("fold sizes", np.bincount(folds, minlength=K), flush=True)

# the distill set: real rows then augmented copies, with each copy's source row (as the stage made them)
a = p.augment
train_file = work / "data/validated/train.parquet"
def train_rows():
    return (b.inputs for b in iter_split(train_file, p.soft_targets.chunk_rows, limit=p.distill.max_train_rows))
src, aug = [], []
for batch, source in augment_batches(train_rows, a.copies, mask_prob=a.mask_prob, replace_prob=a.replace_prob,
                                     ngram_prob=a.ngram_prob, max_ngram=a.max_ngram, seed=p.base.seed):
    aug += batch; src += list(source)
lt = work / "data/teacher_logits"
dset = load_split(lt / "distill_set.parquet")
assert dset.inputs == rows + aug, "regenerated distill set differs"
row_fold = np.concatenate([folds, folds[np.asarray(src, dtype=np.int64)]])
full = np.load(lt / "logits.npy")
assert len(full) == len(row_fold)
oof = np.zeros_like(full)
tmp = work / "oof-tmp"; tmp.mkdir(exist_ok=True)
for k in range(K):
    t0 = time.time()
    seed_everything(p.base.seed)
    model, tok, _ = load_teacher(base, labels, ctx.root)
    keep = np.flatnonzero(folds != k)
    f = save_split(train.subset(keep), tmp / f"train-{k}.parquet")
    info = finetune(ctx, model, tok, SplitInputs(f), tmp / f"fold-{k}")
    clf = TorchClassifier(model, tok, p.data.max_length, truncation=p.data.truncation)
    idx = np.flatnonzero(row_fold == k)
    inputs = dset.inputs
    oof[idx] = clf.predict_logits([inputs[i] for i in idx], batch_size=64)
    real = idx[idx < len(rows)]
    acc = (oof[real].argmax(1) == train.labels[real]).mean()
    print(f"fold {k}: trained on {len(keep)} rows in {info.seconds:.0f}s; scored {len(idx)} rows; "
          f"held-out accuracy on fold {k}: {acc:.4f}; total {time.time()-t0:.0f}s", flush=True)
n = len(rows)
print("OOF accuracy on real rows", (oof[:n].argmax(1) == train.labels).mean(),
      "full teacher", (full[:n].argmax(1) == train.labels).mean())
print("agreement with full teacher on augmented rows", (oof[n:].argmax(1) == full[n:].argmax(1)).mean())
np.save(work / "oof-tmp/logits.full.npy", full)
np.save(lt / "logits.npy", oof.astype(np.float32))
print("written", lt / "logits.npy")
