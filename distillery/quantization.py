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

Other variants (chosen by name in params.yaml, built in distillery/quant_select.py):
static int8 (activation scales calibrated once on training rows), 4-bit block-quantized
embeddings (GatherBlockQuantized) and 4-bit weights (MatMulNBits); see their docstrings.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

from distillery.architectures import ADAPTERS, adapter_for_type
from distillery.fileio import write_atomically

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
PARITY_ATOL = 1e-4
# Example input for tracing: batch 2 and seq 16, because torch.export
# specialises dimensions of size 0/1 to constants.
_EXAMPLE_BATCH, _EXAMPLE_SEQ = 2, 16
# Ops whose constant weights become int8: MatMul (all Linear layers), Gather
# (embedding tables) and LSTM (a BiLSTM student's recurrent layers, which ORT turns into
# DynamicQuantizeLSTM). Other op types ORT can quantize do not occur in our graphs.
_QUANTIZED_OP_TYPES = ["MatMul", "Gather", "LSTM"]


class _LogitsOnly(torch.nn.Module):
    """(input_ids, attention_mask) -> logits.

    Whatever else the family's forward needs is built in-graph (its adapter's
    `export_inputs`: BERT's position and token-type ids, since BERT otherwise slices its
    512-long buffers with `[:, :seq]`, which exports as Min(512, seq) and makes ORT's symbolic
    shape inference fail; RoBERTa offsets its positions itself; ModernBERT needs nothing).

    Sentence pairs (`sep_token_id` given, a family with segment embeddings): the segment of each
    token is derived in-graph from the ids, as the tokenizer assigns it: 0 up to and including
    the first separator, 1 after it; so the graph keeps its two inputs and every caller
    (serving, calibration, parity checks) feeds pairs exactly like single texts.
    """

    def __init__(self, model: torch.nn.Module, sep_token_id: int | None = None):
        super().__init__()
        self.model = model
        model_type = getattr(model.config, "model_type", None)
        self.extra_inputs = adapter_for_type(model_type).export_inputs if model_type in ADAPTERS else None
        self.sep_token_id = sep_token_id if (getattr(model.config, "type_vocab_size", 1) or 1) > 1 else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = self.extra_inputs(input_ids) if self.extra_inputs is not None else {}
        if self.sep_token_id is not None and "token_type_ids" in extra:
            is_sep = (input_ids == self.sep_token_id).long()  # (B, S)
            before = torch.cumsum(is_sep, dim=1) - is_sep  # (B, S): separators strictly before each token
            extra["token_type_ids"] = torch.clamp(before, max=1) * attention_mask
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


def _fold_recurrent_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Make an LSTM's weights plain initializers again, so ORT can quantize them.

    The exporter reorders PyTorch's gates (i, f, g, o) into ONNX's (i, o, f, c) with Slice,
    Concat and Unsqueeze nodes on the weights, and its optimizer folds them into constants only
    below 512 x 512 values: a wider LSTM kept them as nodes, and ORT's dynamic quantizer, which
    quantizes only initializer weights, left it in fp32. Graphs without recurrent nodes (the
    transformer students) are returned as they are.
    """
    if not any(n.op_type in ("LSTM", "GRU") for n in proto.graph.node):
        return proto
    import onnxscript.optimizer

    limit = 1 << 30  # values: fold whatever is constant, however large
    return onnxscript.optimizer.optimize(proto, input_size_limit=limit, output_size_limit=limit)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx_parity(model: torch.nn.Module, onnx_path: str | Path, max_length: int,
                      atol: float = PARITY_ATOL, sep_token_id: int | None = None) -> float:
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
            ref = _LogitsOnly(model, sep_token_id)(ids, mask).numpy()
        got = sess.run([OUTPUT_NAME], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if not worst <= atol:  # also catches NaN
        raise RuntimeError(f"{onnx_path}: ONNX logits differ from PyTorch by {worst:.3g} (> {atol})")
    return worst


def _clear_rnn_dispatch_cache() -> None:
    """Let this export see the exporter's own LSTM decomposition.

    For dynamic shapes torch 2.13's exporter swaps in a while-loop LSTM decomposition (one
    ONNX LSTM node, any sequence length) by assigning the op's Python kernel directly, without
    clearing the op's dispatch cache. From the second export in a process on, the cached
    default decomposition is used instead: it unrolls the loop and fixes the sequence length
    (the parity check below then fails). Clearing the cache first avoids that.
    """
    for op in (torch.ops.aten.lstm.input, torch.ops.aten.gru.input):
        cache = getattr(op, "_dispatch_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def export_onnx(model: torch.nn.Module, out_path: str | Path, opset: int, max_length: int,
                sep_token_id: int | None = None) -> Path:
    """Export a transformers sequence classifier (or a BiLSTM student) to one self-contained ONNX file.

    Inputs `input_ids`, `attention_mask` (int64, dynamic batch and sequence), output
    `logits`. Whatever modules the model holds are baked in, so a structurally pruned
    model (per-layer head counts / FFN widths) exports as it is. The graph is checked
    against PyTorch before it is moved to `out_path`. `sep_token_id`: a sentence-pair
    model's separator, from which the graph derives segment ids (see `_LogitsOnly`).
    """
    out_path = Path(out_path)
    limit = getattr(model.config, "max_position_embeddings", max_length)
    if not 2 <= max_length <= limit:
        raise ValueError(f"max_length must be in [2, {limit}] for this model, got {max_length}")
    # Work on a CPU fp32 copy: the caller's model keeps its device, dtype and attention.
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    if hasattr(model, "set_attn_implementation"):  # transformers; a BiLSTM student has no attention
        model.set_attn_implementation("eager")
    _clear_rnn_dispatch_cache()
    wrapped = _LogitsOnly(model, sep_token_id).eval()
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
        proto = _fold_recurrent_weights(_strip_debug_metadata(program.model_proto))
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))  # one file: weights inline, no external data
        check_onnx_parity(model, tmp, max_length, sep_token_id=sep_token_id)

    return write_atomically(out_path, write, suffix=".tmp.onnx")


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    return path


def optimize_fp32_graph(fp32_path: str | Path, out_path: str | Path, method: str, fusable: bool = True) -> Path:
    """Offline fp32 graph fusion before quantization, checked against the input graph.

    "ort_transformers": onnxruntime.transformers' BERT optimizer (opt_level 0: its own
    pattern fusions only, so the file stays portable across CPUs). On our dynamo graphs it
    fuses LayerNorm + residual into SkipLayerNormalization and bias + erf-GELU into BiasGelu
    (MiniLM 2-layer: 107 -> 89 nodes). Attention fusion matches nothing (ORT 1.32): the
    exporter's mask path (And/Where/GatherND from transformers 5's mask builder) is not a
    pattern the fuser knows, so it needs no head count and pruned students optimise alike.
    "none", or a family whose graph these fusions do not fit (`fusable` False, see the
    adapters' `ort_fusion`): copy the graph as exported.
    """
    fp32_path = _require_file(fp32_path)

    def write(tmp: Path) -> None:
        if method == "none" or not fusable:
            tmp.write_bytes(fp32_path.read_bytes())
            return
        if method != "ort_transformers":
            raise ValueError(f"unknown graph optimization {method!r}")
        from onnxruntime.transformers.optimizer import optimize_model

        opt_logger = logging.getLogger("onnxruntime.transformers")
        level = opt_logger.level
        opt_logger.setLevel(logging.ERROR)  # "fused N nodes" chatter per fusion
        try:
            # num_heads/hidden_size 0: detect from the graph (only attention fusion needs them)
            optimized = optimize_model(str(fp32_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
        finally:
            opt_logger.setLevel(level)
        optimized.save_model_to_file(str(tmp), use_external_data_format=False)
        onnx.checker.check_model(str(tmp))
        check_graph_parity(fp32_path, tmp)

    return write_atomically(Path(out_path), write, suffix=".tmp.onnx")


def check_graph_parity(ref_path: str | Path, path: str | Path, atol: float = PARITY_ATOL) -> float:
    """Max |logits difference| between two ONNX graphs on the export's probe batches; raises over `atol`."""
    ref, got = _session(Path(ref_path)), _session(Path(path))
    vocab = next(t.dims[0] for t in onnx.load(str(ref_path)).graph.initializer if len(t.dims) == 2)
    worst = 0.0
    for ids, mask in (_probe_inputs(1, 5, vocab, [5]), _probe_inputs(3, 17, vocab, [17, 8, 2])):
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        diff = np.abs(ref.run([OUTPUT_NAME], feeds)[0] - got.run([OUTPUT_NAME], feeds)[0]).max()
        worst = max(worst, float(diff))
    if not worst <= atol:
        raise RuntimeError(f"{path}: optimized logits differ from the exported graph by {worst:.3g} (> {atol})")
    return worst


def quantize_dynamic_int8(fp32_path: str | Path, int8_path: str | Path, per_channel: bool,
                          quantize_embeddings: bool = True) -> Path:
    """ONNX Runtime dynamic int8 quantization of an fp32 ONNX file (int8 weights for
    MatMuls and, unless `quantize_embeddings` is False, the embedding Gathers; uint8
    activations quantized at run time).

    ORT's `quant_pre_process` is not run: on our exported graphs (already constant-folded
    by the exporter) it changed the int8 MiniLM by 30 KB out of 23.5 MB, with identical
    logits and latency, while adding a symbolic-shape-inference step that can fail.
    """
    fp32_path = _require_file(fp32_path)
    op_types = _QUANTIZED_OP_TYPES if quantize_embeddings else [t for t in _QUANTIZED_OP_TYPES if t != "Gather"]

    def write(tmp: Path) -> None:
        with _without_preprocess_hint():
            quantize_dynamic(fp32_path, tmp, op_types_to_quantize=op_types,
                             per_channel=per_channel, weight_type=QuantType.QInt8)
        onnx.checker.check_model(str(tmp))

    return write_atomically(Path(int8_path), write, suffix=".tmp.onnx")


class FeedsReader(CalibrationDataReader):
    """ORT calibration reader over prepared feed dicts ({"input_ids", "attention_mask"} int64 [B, S])."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_feeds(token_ids: list[list[int]], pad_id: int, same_length: bool) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per text. `same_length` pads all to the longest: ORT's histogram
    calibrators (entropy, percentile) stack every batch's activations into one array,
    which fails on ragged lengths; min-max reduces per batch and needs no padding."""
    if not token_ids:
        raise ValueError("calibration needs at least one text")
    longest = max(1, max(len(ids) for ids in token_ids))
    feeds = []
    for ids in token_ids:
        n = longest if same_length else max(1, len(ids))
        input_ids = np.full((1, n), pad_id, dtype=np.int64)  # (1, S)
        input_ids[0, :len(ids)] = ids
        mask = (np.arange(n) < len(ids)).astype(np.int64)[None, :]  # (1, S)
        feeds.append({"input_ids": input_ids, "attention_mask": mask})
    return feeds


_CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}


def quantize_static_int8(fp32_path: str | Path, int8_path: str | Path, feeds: list[dict[str, np.ndarray]],
                         per_channel: bool, calibration_method: str) -> Path:
    """ONNX Runtime static int8: activation ranges calibrated once on `feeds`, so no
    per-batch scale computation and logits do not depend on batch mates.

    QOperator format (QLinearMatMul etc., uint8 activations, int8 weights), not QDQ: on the
    2-layer MiniLM student QDQ ran 16 ms per batch-1 call against 0.7 ms for QOperator
    (ORT 1.32, 2 threads). Likely cause, not verified: the DequantizeLinear in front of the
    int8 embedding tables is not folded, so the whole vocabulary is dequantized on every call.
    """
    fp32_path = _require_file(fp32_path)

    def write(tmp: Path) -> None:
        # the calibrators print progress ("Collecting tensor data ...") to stdout
        with _without_preprocess_hint(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(fp32_path, tmp, FeedsReader(feeds), quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=_QUANTIZED_OP_TYPES, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=_CALIBRATION[calibration_method])
        onnx.checker.check_model(str(tmp))

    return write_atomically(Path(int8_path), write, suffix=".tmp.onnx")


def quantize_4bit(src_path: str | Path, out_path: str | Path, block_size: int, op_types: tuple[str, ...]) -> Path:
    """Weight-only 4-bit block quantization (symmetric int4, one fp32 scale per `block_size`
    values along the hidden axis) of constant Gather tables (-> GatherBlockQuantized) and/or
    MatMul weights (-> MatMulNBits), ORT contrib ops with CPU kernels.

    Gathers are quantized along axis 1 (hidden), so a looked-up row dequantizes only its own
    blocks. Int4 tensors need opset 21: ORT's quantizer raises the default-domain opset of an
    older graph to 21 in place; for the ops our exporter emits the versions up to 21 only add
    types (Cast's new `saturate` applies to float8 only), so this is safe here and every output
    is checked by ONNX's checker and by the caller's accuracy figures.
    """
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = _import_nbits()
    src_path = _require_file(src_path)

    def write(tmp: Path) -> None:
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=op_types,
                                              quant_axes=(("MatMul", 0), ("Gather", 1)),
                                              accuracy_level=4)  # MatMulNBits computes in int8 (fastest on CPU)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src_path)), algo_config=config)
        ort_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = ort_logger.level
        ort_logger.setLevel(logging.ERROR)  # the opset-21 warning: see the docstring
        try:
            with np.errstate(invalid="ignore"):  # all-zero blocks (the [PAD] row) divide 0/0; ORT maps them to 0
                quantizer.process()
        finally:
            ort_logger.setLevel(level)
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
        onnx.checker.check_model(str(tmp))

    return write_atomically(Path(out_path), write, suffix=".tmp.onnx")


def _import_nbits():
    """Import ORT's 4-bit quantizer without its import-time `logging.basicConfig(level=INFO)`,
    which would otherwise reconfigure the root logger of the whole process."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                      MatMulNBitsQuantizer)
    finally:
        root.handlers[:], root.level = handlers, level
    return DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # dynamic: "Please consider to run pre-processing ...", static: "Please consider pre-processing ..."
        return not record.getMessage().startswith("Please consider")


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
