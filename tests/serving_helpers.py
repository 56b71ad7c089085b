"""Tiny ONNX text classifiers for the serving tests, built without torch in well under a second.

The graph: logits = sum over real tokens of E[token] (E: [vocab, n_labels]), so a text's label is
set by its cue words; two versions with different E disagree in a way the tests can count by hand.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

LABELS = ["negative", "positive"]
WORDS = ["good", "bad", "great", "awful", "fine", "meh", "the", "movie", "was", "is", "a"]


def make_onnx_classifier(out_dir: Path, scores: dict[str, list[float]], labels: list[str] = LABELS,
                         meta: dict | None = None) -> Path:
    """A model directory: model.onnx, tokenizer.json, labels.json (+ distillery.json from `meta`).
    `scores` gives the logit contribution of a word per class; other words add nothing."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out_dir / "tokenizer.json"))
    table = np.zeros((len(vocab), len(labels)), dtype=np.float32)
    for word, row in scores.items():
        table[vocab[word]] = row
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"], axis=0),            # (B, S, C)
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),          # (B, S, 1)
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_seq"], ["logits"], keepdims=0),  # (B, C)
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"]),
                        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", len(labels)])],
        initializer=[numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis_seq")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(out_dir / "model.onnx"))
    (out_dir / "labels.json").write_text(json.dumps({"labels": labels}))
    if meta:
        (out_dir / "distillery.json").write_text(json.dumps(meta))
    return out_dir


# v1: knows good/bad; v2 also knows great/awful (so they disagree on those); v3 says the opposite of v1.
V1 = {"good": [0, 2], "bad": [2, 0], "great": [1, 0], "awful": [0, 1]}
V2 = {"good": [0, 2], "bad": [2, 0], "great": [0, 2], "awful": [2, 0]}


def label_of(scores: dict, text: str) -> str:
    """What a model built from `scores` answers for `text` (by hand: argmax of summed rows, ties -> first)."""
    total = np.zeros(len(LABELS))
    for w in text.split():
        total += np.array(scores.get(w, [0.0] * len(LABELS)))
    return LABELS[int(total.argmax())]


class ServerThread:
    """uvicorn in a thread on a free 127.0.0.1 port; stop() shuts it down (lifespan included)."""

    def __init__(self, app, port: int):
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
