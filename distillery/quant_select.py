"""Quantized variants by name, and the choice among them per model (params: `quantize`).

Variants of one exported (and optionally fused) fp32 graph:

    dynamic_int8                  int8 MatMul weights + int8 embedding tables, activations quantized per call
    dynamic_int8_fp32_embeddings  the same with the embedding tables left in fp32 (larger, sometimes more accurate)
    static_int8                   int8 weights and activations, activation ranges calibrated on training rows
    int4_embeddings               dynamic_int8 MatMuls + 4-bit block-quantized embedding tables (the largest tensor)
    int4_weights                  4-bit MatMul weights (MatMulNBits) + 4-bit embedding tables: weight-only, fp32 compute
    fp32                          the fp32 graph itself: a safety net for `onnx_select`

`onnx_select` builds each of `quantize.candidates`, scores each against the fp32 graph on
training rows (never eval rows: the choice must not peek at the data the gate judges), and keeps
the smallest file whose accuracy drop stays within `max_accuracy_drop` (`select_candidate`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from distillery.config import MeasureConfig, QuantizeConfig
from distillery.measure import latency_ms
from distillery.quantization import (calibration_feeds, quantize_4bit, quantize_dynamic_int8,
                                     quantize_static_int8)

MODEL_FILE = "model.onnx"
# Files within 1% of the smallest count as the same size; the faster one wins. Without it a
# 20 KB difference in scale tensors would beat a 20% latency difference.
SIZE_TIE = 0.01
_DROP_EPS = 1e-9  # a drop equal to the limit passes despite float rounding


@dataclass(frozen=True)
class BuildInputs:
    """What the variant builders need besides the fp32 graph."""
    per_channel: bool
    int4_block_size: int
    calibration_method: str
    calibration_ids: list[list[int]]  # token ids of the calibration texts (static_int8 only)
    pad_id: int


def build_variant(name: str, fp32_path: Path, out_path: Path, inputs: BuildInputs) -> Path:
    """Write variant `name` of the fp32 graph at `fp32_path` to `out_path`."""
    if name == "dynamic_int8":
        return quantize_dynamic_int8(fp32_path, out_path, inputs.per_channel)
    if name == "dynamic_int8_fp32_embeddings":
        return quantize_dynamic_int8(fp32_path, out_path, inputs.per_channel, quantize_embeddings=False)
    if name == "static_int8":
        same_length = inputs.calibration_method != "minmax"
        feeds = calibration_feeds(inputs.calibration_ids, inputs.pad_id, same_length)
        return quantize_static_int8(fp32_path, out_path, feeds, inputs.per_channel, inputs.calibration_method)
    if name == "int4_embeddings":
        # int8 MatMuls first: ORT's dynamic quantizer predates int4 tensors and opset 21
        matmuls = quantize_dynamic_int8(fp32_path, out_path.with_suffix(".matmul.onnx"), inputs.per_channel,
                                        quantize_embeddings=False)
        try:
            return quantize_4bit(matmuls, out_path, inputs.int4_block_size, ("Gather",))
        finally:
            matmuls.unlink(missing_ok=True)
    if name == "int4_weights":
        return quantize_4bit(fp32_path, out_path, inputs.int4_block_size, ("MatMul", "Gather"))
    if name == "fp32":
        shutil.copyfile(fp32_path, out_path)
        return out_path
    raise ValueError(f"unknown quantization variant {name!r}")


def variant_names(q: QuantizeConfig) -> list[str]:
    """The variants a method builds: all candidates for onnx_select, else the one it names."""
    return list(q.candidates) if q.method == "onnx_select" else [q.method.removeprefix("onnx_")]


def split_training_rows(n_rows: int, calibration_rows: int, selection_rows: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (calibration, selection) row indices into the training split: disjoint when it
    holds enough rows, else the selection takes the last rows of the permutation (overlapping
    the calibration rows as little as the split allows)."""
    if n_rows < 1:
        raise ValueError("the training split is empty")
    order = np.random.default_rng(seed).permutation(n_rows)
    rest = order[calibration_rows:]
    selection = rest[:selection_rows] if len(rest) >= selection_rows else order[-selection_rows:]
    return order[:calibration_rows], selection


def score_candidate(predictor, texts: list[str], gold: np.ndarray, reference_pred: np.ndarray | None,
                    measure: MeasureConfig) -> tuple[dict, np.ndarray]:
    """(figures, predicted classes): accuracy on the selection rows, agreement with the fp32
    predictions (when given), batch-1 p50 (timed on the selection rows as `measure` says), file size."""
    pred = predictor.predict_logits(texts, batch_size=measure.throughput_batch_size).argmax(axis=-1)  # (n,)
    figures = {"accuracy": float((pred == gold).mean()),
               "latency_p50_ms": latency_ms(predictor, texts, measure.latency_samples, measure.warmup)[0],
               "size_bytes": int(predictor.size_bytes())}
    if reference_pred is not None:
        figures["agreement"] = float((pred == reference_pred).mean())
    return figures, pred


def select_candidate(candidates: list[dict], max_accuracy_drop: float) -> dict:
    """Pick a candidate from its figures; pure, so it is tested on hand-written numbers.

    Each candidate: {"name", "size_bytes", "latency_p50_ms", "accuracy_drop"} or {"name", "error"}.
    Rule: among those with accuracy_drop <= max_accuracy_drop, the smallest file; files within
    SIZE_TIE of the smallest tie, and the fastest p50 among them wins. If none is within the
    limit, fall back to the smallest drop (then the smallest file) and say so: the gate downstream
    still judges the model on the eval data. Returns {"chosen", "within_limit", "reason",
    "verdicts": {name: why it won or lost}}.
    """
    built = [c for c in candidates if c.get("error") is None]
    verdicts = {c["name"]: f"failed to build: {c['error']}" for c in candidates if c.get("error") is not None}
    if not built:
        raise RuntimeError("no quantization candidate could be built: "
                           + "; ".join(f"{c['name']}: {c['error']}" for c in candidates))
    within = [c for c in built if c["accuracy_drop"] <= max_accuracy_drop + _DROP_EPS]
    for c in built:
        if c not in within:
            verdicts[c["name"]] = f"accuracy drop {c['accuracy_drop']:.4f} > max_accuracy_drop {max_accuracy_drop}"
    if within:
        smallest = min(c["size_bytes"] for c in within)
        tied = [c for c in within if c["size_bytes"] <= smallest * (1 + SIZE_TIE)]
        best = min(tied, key=lambda c: (c["latency_p50_ms"], c["size_bytes"]))
        for c in within:
            if c is not best:
                verdicts[c["name"]] = ("same size within 1% but slower p50" if c in tied
                                       else f"larger ({c['size_bytes'] / 1e6:.2f} MB)")
        reason = (f"smallest file ({best['size_bytes'] / 1e6:.2f} MB) within max_accuracy_drop "
                  f"{max_accuracy_drop} (drop {best['accuracy_drop']:.4f})"
                  + (f", fastest p50 of {len(tied)} of the same size" if len(tied) > 1 else ""))
        verdicts[best["name"]] = "chosen: " + reason
        return {"chosen": best["name"], "within_limit": True, "reason": reason, "verdicts": verdicts}
    best = min(built, key=lambda c: (c["accuracy_drop"], c["size_bytes"]))
    reason = (f"no candidate within max_accuracy_drop {max_accuracy_drop}; fell back to the smallest "
              f"drop ({best['accuracy_drop']:.4f}); add a less aggressive candidate (e.g. fp32) or raise the limit")
    verdicts[best["name"]] = "chosen: " + reason
    return {"chosen": best["name"], "within_limit": False, "reason": reason, "verdicts": verdicts}


def build_and_select(fp32_path: Path, work_dir: Path, q: QuantizeConfig, inputs: BuildInputs, *,
                     package: Callable[[Path], None], load: Callable[[Path], object],
                     selection: tuple[list[str], np.ndarray], measure: MeasureConfig) -> tuple[Path, dict]:
    """Build each variant `q` asks for into work_dir/<name>/ (a full model directory via
    `package`), choose one, and return (its directory, the report's "selection" part).

    With one variant (any onnx_<variant> method) nothing is scored: it is the answer, and a
    failure to build it is an error. With onnx_select a candidate that fails to build is
    reported and skipped.
    """
    names = variant_names(q)
    dirs: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for name in names:
        d = work_dir / name
        d.mkdir(parents=True)
        try:
            build_variant(name, fp32_path, d / MODEL_FILE, inputs)
        except Exception as exc:  # noqa: BLE001 - one broken variant must not sink the others
            if len(names) == 1:
                raise
            failures[name] = f"{type(exc).__name__}: {exc}"
            shutil.rmtree(d, ignore_errors=True)
            continue
        package(d)
        dirs[name] = d
    if len(names) == 1:
        return dirs[names[0]], {"variant": names[0]}

    texts, gold = selection
    reference_dir = work_dir / "_fp32_reference"
    reference_dir.mkdir()
    shutil.copyfile(fp32_path, reference_dir / MODEL_FILE)
    package(reference_dir)
    reference, reference_pred = score_candidate(load(reference_dir), texts, gold, None, measure)
    figures = [{"name": n, "error": e} for n, e in failures.items()]
    for name, d in dirs.items():
        f, _ = score_candidate(load(d), texts, gold, reference_pred, measure)
        figures.append({"name": name, **f, "accuracy_drop": reference["accuracy"] - f["accuracy"]})
    decision = select_candidate(figures, q.max_accuracy_drop)
    report = {"variant": decision["chosen"], "within_limit": decision["within_limit"], "reason": decision["reason"],
              "selection_rows": len(texts), "fp32_selection_accuracy": reference["accuracy"],
              "fp32_size_bytes": reference["size_bytes"], "fp32_latency_p50_ms": reference["latency_p50_ms"],
              "candidates": [{**c, "verdict": decision["verdicts"][c["name"]]} for c in figures]}
    return dirs[decision["chosen"]], report
