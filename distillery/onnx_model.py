"""Serving-time classifier over an exported model directory: ONNX Runtime only.

This module must not import torch (nor transformers, whose AutoTokenizer import
pulls torch in, ~1.7 s and a few hundred MB): a served model needs only
onnxruntime, numpy and the `tokenizers` library. The directory holds

    model.onnx       inputs input_ids, attention_mask (int64 [batch, seq]) -> logits
    tokenizer.json   a `tokenizers` file, as written by save_pretrained
    labels.json      {"labels": [...]}: class names in logit order
    distillery.json  optional, {"max_length": N, "truncation": "head" | "head_tail",
                     "input_columns": ["text"] or ["text", "text_pair"]}: tokens per input
                     (else 128), how longer inputs are cut (distillery.encoding), and the
                     columns a served request must carry
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from distillery.encoding import TRUNCATIONS, encode_batch

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
META_FILE = "distillery.json"
DEFAULT_MAX_LENGTH = 128


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _read_labels(model_dir: Path) -> list[str]:
    labels = _read_json(model_dir / LABELS_FILE).get("labels")
    if not isinstance(labels, list) or len(labels) < 2:
        raise ValueError(f"{model_dir / LABELS_FILE}: 'labels' must list at least two class names")
    return [str(x) for x in labels]


def _read_max_length(model_dir: Path) -> int:
    path = model_dir / META_FILE
    if not path.exists():
        return DEFAULT_MAX_LENGTH
    value = _read_json(path).get("max_length", DEFAULT_MAX_LENGTH)
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ValueError(f"{path}: max_length must be an integer >= 2, got {value!r}")
    return value


def read_input_meta(model_dir: str | Path) -> dict:
    """{"max_length", "truncation", "input_columns"} of a model directory, with the defaults of
    directories written before these were recorded (one text column, head truncation)."""
    path = Path(model_dir) / META_FILE
    meta = _read_json(path) if path.exists() else {}
    truncation = meta.get("truncation", "head")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"{path}: truncation must be one of {list(TRUNCATIONS)}, got {truncation!r}")
    columns = meta.get("input_columns", ["text"])
    if not (isinstance(columns, list) and 1 <= len(columns) <= 2 and all(isinstance(c, str) and c for c in columns)):
        raise ValueError(f"{path}: input_columns must list one or two column names, got {columns!r}")
    return {"max_length": _read_max_length(Path(model_dir)), "truncation": truncation, "input_columns": columns}


def _pad_token_id(tokenizer: Tokenizer, model_dir: Path) -> int:
    """The pad id the model was trained with: tokenizer_config.json's pad_token, else [PAD]."""
    config_path = model_dir / "tokenizer_config.json"
    pad = _read_json(config_path).get("pad_token") if config_path.exists() else None
    if isinstance(pad, dict):  # older files store {"content": "[PAD]", ...}
        pad = pad.get("content")
    pad_id = tokenizer.token_to_id(pad or "[PAD]")
    if pad_id is None:
        raise ValueError(f"{model_dir}: pad token {pad or '[PAD]'!r} is not in the tokenizer's vocabulary")
    return pad_id


def _session(model_path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # one graph at a time: more threads only contend on small CPUs
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def _logits_output(session: ort.InferenceSession):
    """The output named "logits" (our exporter's), else the first one."""
    outputs = session.get_outputs()
    return next((o for o in outputs if o.name == "logits"), outputs[0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)  # stable: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxClassifier:
    """Text classifier over an ONNX Runtime session; see the module docstring for the files."""

    def __init__(self, session: ort.InferenceSession, tokenizer: Tokenizer, labels: list[str],
                 pad_id: int, model_path: Path, max_length: int = DEFAULT_MAX_LENGTH, truncation: str = "head",
                 input_columns: list[str] | None = None):
        self.session = session
        self.tokenizer = tokenizer  # truncation and padding are ours (encode_batch, _feeds)
        self.max_length, self.truncation = max_length, truncation
        self.input_columns = list(input_columns or ["text"])
        self.labels = labels
        self.pad_id = pad_id
        self.model_path = model_path
        self._input_names = {i.name for i in session.get_inputs()}
        self._output_name = _logits_output(session).name

    @classmethod
    def from_dir(cls, model_dir: str | Path, threads: int = 2) -> "OnnxClassifier":
        model_dir = Path(model_dir)
        for name in (MODEL_FILE, TOKENIZER_FILE, LABELS_FILE):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"{model_dir}: missing {name}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        labels = _read_labels(model_dir)
        meta = read_input_meta(model_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        tokenizer.no_padding()  # a saved fixed-length padding would defeat pad-to-longest
        session = _session(model_dir / MODEL_FILE, threads)
        n_out = _logits_output(session).shape[-1]
        if isinstance(n_out, int) and n_out != len(labels):
            raise ValueError(f"{model_dir}: model has {n_out} outputs but {LABELS_FILE} names {len(labels)} labels")
        return cls(session, tokenizer, labels, _pad_token_id(tokenizer, model_dir), model_dir / MODEL_FILE,
                   meta["max_length"], meta["truncation"], meta["input_columns"])

    def _feeds(self, token_ids: list[list[int]]) -> dict[str, np.ndarray]:
        """Pad a batch to its longest item (not to max_length: short texts stay cheap)."""
        longest = max(1, max(len(ids) for ids in token_ids))  # a tokenizer may yield no ids for ""
        input_ids = np.full((len(token_ids), longest), self.pad_id, dtype=np.int64)  # (B, S)
        attention_mask = np.zeros_like(input_ids)  # (B, S): 1 = real token
        for row, ids in enumerate(token_ids):
            input_ids[row, :len(ids)] = ids
            attention_mask[row, :len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._input_names:  # graphs from other exporters may want it
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return feeds

    def predict_logits(self, texts: list, batch_size: int = 32) -> np.ndarray:
        """Logits [n, n_labels] in input order; `texts` are strings or (text, text_pair) tuples.
        Inputs are batched in order of length, which keeps padding (wasted compute) small; the
        order is restored after."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        token_ids, _ = encode_batch(self.tokenizer, list(texts), self.max_length, self.truncation)
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            feeds = self._feeds([token_ids[i] for i in rows])
            out[rows] = self.session.run([self._output_name], feeds)[0]
        return out

    def predict(self, texts: list, batch_size: int = 32) -> list[dict]:
        """[{"label": name, "probabilities": {name: p}}] per text, p summing to 1."""
        probs = _softmax(self.predict_logits(texts, batch_size).astype(np.float64))
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {name: float(v) for name, v in zip(self.labels, p)}}
                for p in probs]

    def size_bytes(self) -> int:
        return self.model_path.stat().st_size
