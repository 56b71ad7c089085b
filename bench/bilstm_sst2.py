"""The BiLSTM student (Tang et al. 2019) on SST-2, measured beside the benchmark's final model.

Run after `make bench` (it reads the benchmark's work folder, never writes there):

    .venv/bin/python -m bench.bilstm_sst2 [--work bench/work/sst2] [--out /tmp/bilstm-sst2]

It distils a BiLSTM with the pipeline's own functions (`build_student`, `training.train`,
`export_onnx`, `quantize_dynamic_int8`, `measure_predictor`) on the benchmark's fine-tuned teacher
and its soft targets for every training phrase, then measures, in one process and at batch 1 on
every dev sentence: the BiLSTM in fp32 (PyTorch) and int8 (ONNX Runtime), and the benchmark's
final model (E-quantize) for the side-by-side ratio. Figures go to <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

from distillery.config import BiLSTMStudentConfig, ConfigError, MeasureConfig, StudentConfig
from distillery.data import load_split
from distillery.losses import get_loss
from distillery.measure import measure_predictor
from distillery.modeling import count_parameters, load_model_dir, save_model_dir
from distillery.onnx_model import OnnxClassifier
from distillery.quantization import export_onnx, quantize_dynamic_int8
from distillery.student import build_student
from distillery.training import TorchClassifier, TrainSpec, encode_texts, seed_everything, train

MAX_LENGTH = 64  # the benchmark profile's data.max_length
SEED = 42


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.bilstm_sst2", description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="bench/work/sst2", help="the benchmark's work folder (make bench makes it)")
    ap.add_argument("--out", default="/tmp/bilstm-sst2", help="where the BiLSTM, its ONNX files and results go")
    ap.add_argument("--hidden", type=int, default=150, help="LSTM units per direction")
    ap.add_argument("--embedding-dim", type=int, default=None, help="PCA width of the embedding (default: teacher's)")
    ap.add_argument("--classifier-hidden", type=int, default=200)
    ap.add_argument("--pooling", default="final", choices=["final", "max"])
    ap.add_argument("--loss", default="mse_logits", choices=["mse_logits", "hinton_kd"])
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-rows", type=int, default=None, help="first N distillation rows (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def _require(path: Path) -> Path:
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `make bench` first (this reads its work folder)")
    return path


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    torch.set_num_threads(a.threads)
    seed_everything(SEED)
    data = load_split(_require(work / "data/teacher_logits/distill_set.parquet"))
    logits = np.load(_require(work / "data/teacher_logits/logits.npy"))
    dev = load_split(_require(work / "data/validated/eval.parquet"))
    labels = json.loads(_require(work / "models/teacher/labels.json").read_text())["labels"]
    final_dir = _require(work / "models/quantized")
    final_params = json.loads(_require(work / "reports/quantize.json").read_text())["params"]

    n = a.max_rows or len(data)
    texts, y, t = list(data.texts)[:n], data.labels[:n], logits[:n]
    teacher, tokenizer, _, _ = load_model_dir(work / "models/teacher")
    cfg = StudentConfig(architecture="bilstm", trim_vocabulary=True,
                        bilstm=BiLSTMStudentConfig(hidden_size=a.hidden, embedding_dim=a.embedding_dim,
                                                   classifier_hidden=a.classifier_hidden, pooling=a.pooling))
    built = build_student(teacher, tokenizer, cfg, texts, MAX_LENGTH, SEED)
    del teacher
    model = built.model
    print(f"BiLSTM student: {count_parameters(model):,} parameters, {built.info}", flush=True)
    loss = partial(get_loss(a.loss), temperature=1.0, alpha=a.alpha)
    spec = TrainSpec(loss_fn=loss, epochs=a.epochs, batch_size=a.batch_size, learning_rate=a.lr, seed=SEED,
                     device=torch.device("cpu"), desc="distill")
    trained = train(model, encode_texts(built.tokenizer, texts, MAX_LENGTH), y, spec, teacher_logits=t)
    model.to("cpu").eval()
    save_model_dir(model, built.tokenizer, labels, out / "student", {"max_length": MAX_LENGTH, "role": "student"})

    int8_dir = out / "quantized"
    int8_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, out / "model.fp32.onnx", 18, MAX_LENGTH)
    quantize_dynamic_int8(fp32, int8_dir / "model.onnx", per_channel=True)
    built.tokenizer.save_pretrained(int8_dir)
    (int8_dir / "labels.json").write_text(json.dumps({"labels": labels}))
    (int8_dir / "distillery.json").write_text(json.dumps({"max_length": MAX_LENGTH}))

    cfg = MeasureConfig(latency_samples=len(dev), warmup=20, throughput_batch_size=32)
    n_params = count_parameters(model)
    results = {"args": vars(a), "train": vars(trained), "student": built.info, "params": n_params}
    results["bilstm_fp32_torch"] = measure_predictor(TorchClassifier(model, built.tokenizer, MAX_LENGTH),
                                                     list(dev.texts), dev.labels, len(labels), cfg,
                                                     model_dir=out / "student", n_params=n_params)
    results["bilstm_int8_onnx"] = measure_predictor(OnnxClassifier.from_dir(int8_dir, threads=a.threads),
                                                    list(dev.texts), dev.labels, len(labels), cfg,
                                                    model_dir=int8_dir, n_params=n_params)
    results["E_quantize_same_run"] = measure_predictor(OnnxClassifier.from_dir(final_dir, threads=a.threads),
                                                       list(dev.texts), dev.labels, len(labels), cfg,
                                                       model_dir=final_dir, n_params=final_params)
    for key in ("bilstm_fp32_torch", "bilstm_int8_onnx", "E_quantize_same_run"):
        r = results[key]
        print(f"{key}: accuracy {r['accuracy']:.4f}  size {r['size_mb']:.2f} MB  p50 {r['latency_p50_ms']:.2f} ms",
              flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
