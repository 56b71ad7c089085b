"""Peak resident memory while scoring: one model, one fresh process.

    python -m bench.memory --kind torch|torch-dynamic-int8|onnx --model-dir DIR --texts FILE.json ...

A fresh process per model, so no model sees another's leftovers. The process imports only
what serving that kind of model needs (PyTorch + transformers, or ONNX Runtime + tokenizers:
an ONNX model is served without torch), loads the model, frees what loading left behind
(gc + malloc_trim), resets the kernel's high-water mark (/proc/self/clear_refs), scores every
text once at the throughput batch size, and reads the high-water mark (VmHWM). Figures
(MB = 10^6 bytes), printed as one JSON line:

    peak_rss_mb      the process's peak RSS while scoring (interpreter + runtime + model + activations)
    loaded_rss_mb    RSS after loading, before scoring
    imports_rss_mb   RSS after the imports, before loading
    peak_over_imports_mb = peak_rss_mb - imports_rss_mb: what the model and its scoring add
Linux only (reads /proc); elsewhere a 1 ms sampling thread stands in for the high-water mark.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import re
import sys
import threading
import time
from pathlib import Path

KINDS = ("torch", "torch-dynamic-int8", "onnx")


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import resource  # fallback: the lifetime peak, an over-estimate

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024 / 1e6


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


def trim() -> None:
    """Return freed heap to the OS, so a load's temporary copies do not count as scoring memory."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = rss_mb(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.001)


def load(kind: str, model_dir: str, threads: int, max_length: int):
    """Import what this kind needs, then load; returns (imports_rss_mb, predictor)."""
    if kind == "onnx":
        from distillery.onnx_model import OnnxClassifier  # no torch in this process

        imports = rss_mb()
        return imports, OnnxClassifier.from_dir(model_dir, threads=threads)
    import torch

    from bench.torch_int8 import quantize_torch_dynamic
    from distillery.modeling import load_model_dir
    from distillery.training import TorchClassifier

    torch.set_num_threads(threads)
    imports = rss_mb()
    model, tokenizer, _, _ = load_model_dir(model_dir)
    if kind == "torch-dynamic-int8":  # C: quantized at load time, from the fp32 teacher directory
        model = quantize_torch_dynamic(model)  # the fp32 copy is dropped here and trimmed below
    return imports, TorchClassifier(model, tokenizer, max_length)


def measure(kind: str, model_dir: str, texts: list[str], threads: int, batch_size: int, max_length: int) -> dict:
    imports, predictor = load(kind, model_dir, threads, max_length)
    trim()
    loaded = rss_mb()
    sampler = None
    if not reset_peak():
        sampler = _Sampler()
        sampler.start()
    predictor.predict_logits(texts, batch_size=batch_size)
    if sampler is None:
        peak = _status_kb("VmHWM") * 1024 / 1e6
    else:
        sampler.stop.set()
        sampler.join()
        peak = sampler.peak
    return {"peak_rss_mb": peak, "loaded_rss_mb": loaded, "imports_rss_mb": imports,
            "peak_over_imports_mb": peak - imports, "method": "VmHWM" if sampler is None else "sampled",
            "texts": len(texts), "batch_size": batch_size, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--texts", required=True, help="JSON file: a list of texts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    a = ap.parse_args(argv)
    texts = json.loads(Path(a.texts).read_text())
    print(json.dumps(measure(a.kind, a.model_dir, texts, a.threads, a.batch_size, a.max_length)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
