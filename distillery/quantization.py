"""ONNX export of a sequence classifier and ONNX Runtime dynamic int8 quantization.

Exporter: torch 2.13's default dynamo exporter (`torch.export` + onnxscript).
It exports BERT cleanly (logits match PyTorch to ~1e-7 on the packaged MiniLM)
and, with explicit `torch.export.Dim`s, fails loudly instead of silently baking
a sequence length into the graph; the legacy TorchScript exporter offers no
gain here (ORT's attention fusion matches neither graph).

Attention: "eager". Both eager and sdpa export and match PyTorch, but sdpa
decomposes into a larger graph (315 vs 243 nodes for MiniLM) with extra
Slice/Concat/Where nodes, and ran about 20% slower at batch 1 in ONNX Runtime.

Int8: ONNX Runtime dynamic quantization, int8 weights (per-channel by default
in params.yaml) for every MatMul with a constant weight and for the embedding
Gathers (the word-embedding matrix is about half of a small BERT's bytes);
activations are quantized to uint8 on the fly. On the packaged MiniLM (90.9 MB fp32)
this gives 23.0 MB (59.2 MB with the embeddings left in fp32). Dynamic activation
scales are computed per batch, so int8 logits move slightly with a text's batch mates.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from distillery.fileio import write_atomically

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
PARITY_ATOL = 1e-4
# Example input for tracing: batch 2 and seq 16, because torch.export
# specialises dimensions of size 0/1 to constants.
_EXAMPLE_BATCH, _EXAMPLE_SEQ = 2, 16
# Ops whose constant weights become int8: MatMul (all Linear layers) and Gather
# (embedding tables). Other op types ORT can quantize do not occur in our graphs.
_QUANTIZED_OP_TYPES = ["MatMul", "Gather"]


class _LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits.

    For BERT, position and token-type ids are built in-graph: BERT otherwise slices
    its 512-long buffers with `[:, :seq]`, which exports as Min(512, seq) and makes
    ORT's symbolic shape inference (quant_pre_process, the transformer optimizer)
    fail on the graph. Other families (RoBERTa offsets its positions) build their own.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.explicit_ids = getattr(model.config, "model_type", None) == "bert"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.explicit_ids:
            extra["position_ids"] = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, S)
            extra["token_type_ids"] = torch.zeros_like(input_ids)  # (B, S): single-segment inputs
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # (B, n_labels)


def _probe_inputs(batch: int, seq: int, vocab_size: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic token ids (no RNG, so no seed) with row i padded after lengths[i]."""
    ids = (torch.arange(batch * seq).reshape(batch, seq) * 7919 + 3) % vocab_size  # (B, S)
    mask = (torch.arange(seq).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()  # (B, S)
    return ids * mask, mask  # padded positions hold id 0, as a tokenizer's [PAD] usually does


def _strip_debug_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node debug metadata (Python stack traces, FX node text):
    ~0.6 MB on MiniLM, a third of a tiny model's file, and it leaks build-machine paths."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return proto


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx_parity(model: torch.nn.Module, onnx_path: str | Path, max_length: int,
                      atol: float = PARITY_ATOL) -> float:
    """Max |logits difference| between `model` (CPU, eval) and the ONNX graph on a
    batch of 1 and a padded batch of 3 at another length; raises when over `atol`."""
    sess = _session(Path(onnx_path))
    vocab = model.config.vocab_size
    seq = min(max_length, 23)  # a length other than the example's 16
    cases = [_probe_inputs(1, min(5, max_length), vocab, [min(5, max_length)]),
             _probe_inputs(3, seq, vocab, [seq, max(seq // 2, 1), 2])]
    worst = 0.0
    for ids, mask in cases:
        with torch.no_grad():
            ref = _LogitsOnly(model)(ids, mask).numpy()
        got = sess.run([OUTPUT_NAME], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if not worst <= atol:  # also catches NaN
        raise RuntimeError(f"{onnx_path}: ONNX logits differ from PyTorch by {worst:.3g} (> {atol})")
    return worst


def export_onnx(model: torch.nn.Module, out_path: str | Path, opset: int, max_length: int) -> Path:
    """Export a transformers sequence classifier to one self-contained ONNX file.

    Inputs `input_ids`, `attention_mask` (int64, dynamic batch and sequence), output
    `logits`. Whatever modules the model holds are baked in, so a structurally pruned
    model (per-layer head counts / FFN widths) exports as it is. The graph is checked
    against PyTorch before it is moved to `out_path`.
    """
    out_path = Path(out_path)
    limit = getattr(model.config, "max_position_embeddings", max_length)
    if not 2 <= max_length <= limit:
        raise ValueError(f"max_length must be in [2, {limit}] for this model, got {max_length}")
    # Work on a CPU fp32 copy: the caller's model keeps its device, dtype and attention.
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    model.set_attn_implementation("eager")
    wrapped = _LogitsOnly(model).eval()
    seq = min(_EXAMPLE_SEQ, max_length)
    example = _probe_inputs(_EXAMPLE_BATCH, seq, model.config.vocab_size, [seq, max(seq // 2, 1)])
    batch_dim, seq_dim = torch.export.Dim("batch"), torch.export.Dim("seq")
    dims = {"input_ids": {0: batch_dim, 1: seq_dim}, "attention_mask": {0: batch_dim, 1: seq_dim}}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (axis renaming, torchvision ops)
            program = torch.onnx.export(wrapped, example, input_names=list(INPUT_NAMES),
                                        output_names=[OUTPUT_NAME], dynamic_shapes=dims,
                                        opset_version=opset, dynamo=True, verbose=False)
        proto = _strip_debug_metadata(program.model_proto)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))  # one file: weights inline, no external data
        check_onnx_parity(model, tmp, max_length)

    return write_atomically(out_path, write, suffix=".tmp.onnx")


def quantize_dynamic_int8(fp32_path: str | Path, int8_path: str | Path, per_channel: bool) -> Path:
    """ONNX Runtime dynamic int8 quantization of an fp32 ONNX file (int8 weights for
    MatMuls and embedding Gathers, uint8 activations quantized at run time).

    ORT's `quant_pre_process` is not run: on our exported graphs (already constant-folded
    by the exporter) it changed the int8 MiniLM by 30 KB out of 23.5 MB, with identical
    logits and latency, while adding a symbolic-shape-inference step that can fail.
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"{fp32_path}: no such ONNX file")

    def write(tmp: Path) -> None:
        with _without_preprocess_hint():
            quantize_dynamic(fp32_path, tmp, op_types_to_quantize=_QUANTIZED_OP_TYPES,
                             per_channel=per_channel, weight_type=QuantType.QInt8)
        onnx.checker.check_model(str(tmp))

    return write_atomically(int8_path, write, suffix=".tmp.onnx")


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _without_preprocess_hint():
    """ORT logs a hint to run quant_pre_process on the root logger at every call;
    we skip it on purpose (see quantize_dynamic_int8), so the hint is noise."""
    hint = _DropPreprocessHint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
