"""Every model of the benchmark measured side by side, in one process, under one set of conditions.

Conditions, the same for every model and in the same order: `base.threads` threads for
PyTorch (torch.set_num_threads) and ONNX Runtime (intra-op), every eval sentence, and
`distillery.measure.measure_predictor`, the pipeline's own measurement: scoring all
sentences at the throughput batch size first (accuracy, macro-F1; also the warm-up), then
batch-1 latency over every sentence in file order at its real length (no padding; after
`measure.warmup` untimed sentences; tokenization included), then batch-32 throughput
(after one untimed batch). Models are loaded one at a time and freed before the next.
Then the rows in ONE_THREAD (the teacher, its int8 export, the final model and the tiny one) are timed once
more at batch 1 with one thread (PyTorch and ONNX Runtime), the cheapest serving set-up.
Peak memory comes from a fresh process per model (bench/memory.py), after all timings.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillery.config import Params
from distillery.measure import latency_ms, measure_predictor

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = ("A", "B", "E-quantize", "E-tiny")  # rows whose batch-1 latency is also measured at 1 thread


@dataclass(frozen=True)
class ModelSpec:
    key: str             # row name in the results: A, B, C, D, D-int8, E-distill, E-prune, E-quantize, E-tiny
    label: str           # short label for the plots
    what: str            # one line for the table
    kind: str            # how it is loaded: one of bench.memory.KINDS
    model_dir: Path
    n_params: int        # parameters of the fp32 model (an int8 model stores the same ones as int8)
    size_file: Path | None = None  # weights outside model_dir's safetensors/ONNX files (C's state dict)


class OtherCpu:
    """Share of the machine's CPU time used by *other* processes while a block runs (Linux /proc/stat).

    Timings on a 2-core machine are only meaningful when nothing else runs; this says whether
    something did, so a noisy row can be recognised instead of trusted.
    """

    @staticmethod
    def _read():
        try:
            vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        # this process (all threads) and its finished children (the DVC stage processes), in jiffies
        own = sum(os.times()[:4]) * os.sysconf("SC_CLK_TCK")
        return sum(vals), sum(vals) - vals[3] - vals[4], own  # total, busy (not idle / iowait), own

    def __enter__(self):
        self.start, self.share = self._read(), None
        return self

    def __exit__(self, *exc):
        end = self._read()
        if self.start and end and end[0] > self.start[0]:
            busy, own = end[1] - self.start[1], end[2] - self.start[2]
            self.share = max(0.0, busy - own) / (end[0] - self.start[0])
        return False


def load_predictor(spec: ModelSpec, threads: int, max_length: int):
    """A `predict_logits` object for the spec, as the memory probe loads it."""
    if spec.kind == "onnx":
        from distillery.onnx_model import OnnxClassifier

        return OnnxClassifier.from_dir(spec.model_dir, threads=threads)
    from distillery.modeling import load_model_dir
    from distillery.training import TorchClassifier

    model, tokenizer, _, meta = load_model_dir(spec.model_dir)
    if spec.kind == "torch-dynamic-int8":
        from bench.torch_int8 import quantize_torch_dynamic

        model = quantize_torch_dynamic(model)
    return TorchClassifier(model, tokenizer, max_length, truncation=meta.get("truncation", "head"))


def measure_all(specs: list[ModelSpec], texts: list[str], gold: np.ndarray, n_classes: int,
                params: Params) -> dict[str, dict]:
    """Figures per model key, measured in this process in the order of `specs`."""
    import torch

    torch.set_num_threads(params.base.threads)
    rows = {}
    every_row = params.measure.model_copy(update={"latency_samples": len(texts)})  # latency over the whole eval set
    for spec in specs:
        predictor = load_predictor(spec, params.base.threads, params.data.max_length)
        start = time.perf_counter()
        with OtherCpu() as other:
            figures = measure_predictor(predictor, texts, gold, n_classes, every_row, model_dir=spec.model_dir,
                                        n_params=spec.n_params)
        figures["measure_seconds"] = time.perf_counter() - start
        figures["other_cpu_share"] = other.share
        if spec.size_file is not None:
            figures["size_mb"] = round(spec.size_file.stat().st_size / 1e6, 4)
        rows[spec.key] = figures
        print(f"bench: {spec.key:<10} accuracy {figures['accuracy']:.4f}  {figures['size_mb']:8.2f} MB  "
              f"p50 {figures['latency_p50_ms']:7.2f} ms  {figures['throughput_sps']:8.1f}/s")
        del predictor
        gc.collect()
    torch.set_num_threads(1)
    try:
        for spec in (s for s in specs if s.key in ONE_THREAD):
            predictor = load_predictor(spec, 1, params.data.max_length)
            with OtherCpu() as other:
                p50, p95 = latency_ms(predictor, texts, len(texts), params.measure.warmup)
            rows[spec.key].update(latency_p50_ms_1_thread=p50, latency_p95_ms_1_thread=p95,
                                  other_cpu_share_1_thread=other.share)
            print(f"bench: {spec.key:<10} 1 thread: p50 {p50:7.2f} ms")
            del predictor
            gc.collect()
    finally:
        torch.set_num_threads(params.base.threads)
    return rows


def measure_memory(spec: ModelSpec, texts_file: Path, params: Params) -> dict:
    """Peak RSS while scoring, from a fresh `python -m bench.memory` process."""
    cmd = [sys.executable, "-m", "bench.memory", "--kind", spec.kind, "--model-dir", str(spec.model_dir),
           "--texts", str(texts_file), "--threads", str(params.base.threads),
           "--batch-size", str(params.measure.throughput_batch_size), "--max-length", str(params.data.max_length)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"memory probe for {spec.key} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"memory probe for {spec.key} printed no figures:\n{r.stdout[-2000:]}")


def write_texts(texts: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(texts)))
    return path
