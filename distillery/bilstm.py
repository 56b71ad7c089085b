"""BiLSTM student over the teacher's word embeddings (Tang et al. 2019, "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks").

    tokens -> embedding (teacher's rows, trimmed vocabulary, optionally PCA-projected)
           -> L x BiLSTM -> pool (final states of both directions | max over positions)
           -> [Linear -> ReLU] -> Linear -> logits

Padding never changes a text's logits, in PyTorch and in the exported ONNX graph alike:
each direction is a one-way LSTM, and the backward one reads every row reversed *within
its own length* (a gather, see `reverse_padded`), so it meets a row's real tokens first
and its padding last; pooling reads only real positions. Packed sequences would do the
same in PyTorch, but do not survive export. Rows must be right-padded, as `training.collate`
and `onnx_model.OnnxClassifier` pad them; a row's length is its attention-mask sum.

The model directory is this project's own format: `config.json` (`"architecture": "bilstm"`
and the sizes below), `model.safetensors`, tokenizer files, `labels.json`, `distillery.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.modeling_outputs import SequenceClassifierOutput

from distillery.config import ConfigError
from distillery.vocab import plan_vocabulary, token_counts, trim_tokenizer

ARCHITECTURE = "bilstm"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class BiLSTMConfig(BaseModel):
    """What `config.json` of a BiLSTM student holds; attribute names follow Hugging Face
    configs where the pipeline reads them (`num_labels`, `vocab_size`, `model_type`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Literal["bilstm"] = ARCHITECTURE
    vocab_size: int = Field(ge=1)
    embedding_dim: int = Field(ge=1)
    hidden_size: int = Field(ge=1)             # LSTM units per direction
    num_layers: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    pooling: Literal["final", "max"]
    classifier_hidden: int = Field(ge=0)       # 0: the pooled vector feeds the output layer directly
    num_labels: int = Field(ge=2)
    pad_token_id: int = Field(ge=0)

    @property
    def model_type(self) -> str:
        return ARCHITECTURE


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row of x (B, S, E) within its first lengths[b] positions; padding stays
    where it is. Its own inverse."""
    pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, S)
    n = lengths.unsqueeze(1)  # (B, 1)
    idx = torch.where(pos < n, n - 1 - pos, pos)  # (B, S)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class BiLSTMClassifier(nn.Module):
    """Takes (input_ids, attention_mask), returns an output with `.logits` (B, num_labels),
    like a Hugging Face sequence classifier, so training, measuring and export take either."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        self.config = config
        c = config
        self.embeddings = nn.Embedding(c.vocab_size, c.embedding_dim)
        self.forward_lstms = nn.ModuleList(
            nn.LSTM(c.embedding_dim if i == 0 else 2 * c.hidden_size, c.hidden_size, batch_first=True)
            for i in range(c.num_layers))
        self.backward_lstms = nn.ModuleList(
            nn.LSTM(c.embedding_dim if i == 0 else 2 * c.hidden_size, c.hidden_size, batch_first=True)
            for i in range(c.num_layers))
        self.dropout = nn.Dropout(c.dropout)
        width = 2 * c.hidden_size
        self.classifier = (nn.Sequential(nn.Linear(width, c.classifier_hidden), nn.ReLU(), nn.Dropout(c.dropout),
                                         nn.Linear(c.classifier_hidden, c.num_labels))
                           if c.classifier_hidden else nn.Linear(width, c.num_labels))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> SequenceClassifierOutput:
        if output_hidden_states or output_attentions:
            raise ValueError("a BiLSTM student has no transformer hidden states or attentions to distil "
                             "(distill.hidden_weight / attention_weight apply to transformer students)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(1).clamp_min(1)  # (B,); an empty row reads its first token
        h = self.dropout(self.embeddings(input_ids))  # (B, S, E)
        for fwd, bwd in zip(self.forward_lstms, self.backward_lstms):
            f = fwd(h)[0]  # (B, S, U): position t has read tokens 0..t
            b = reverse_padded(bwd(reverse_padded(h, lengths))[0], lengths)  # (B, S, U): tokens t..len-1
            h = self.dropout(torch.cat([f, b], dim=-1))  # (B, S, 2U)
        if self.config.pooling == "final":
            last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, self.config.hidden_size)  # (B, 1, U)
            u = self.config.hidden_size
            pooled = torch.cat([h[:, :, :u].gather(1, last).squeeze(1), h[:, 0, u:]], dim=-1)  # (B, 2U)
        else:
            # positions from the input's shape, not h's: the export then keeps the sequence axis dynamic
            real = (torch.arange(input_ids.shape[1], device=h.device).unsqueeze(0) < lengths.unsqueeze(1))
            real = real.unsqueeze(-1)  # (B, S, 1)
            pooled = h.masked_fill(~real, torch.finfo(h.dtype).min).amax(dim=1)  # (B, 2U)
        return SequenceClassifierOutput(logits=self.classifier(pooled))

    def save_pretrained(self, out_dir: str | Path, **_ignored) -> None:
        """config.json + model.safetensors, as `modeling.save_model_dir` expects of any model."""
        out_dir = Path(out_dir)
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(out_dir / WEIGHTS_FILE))


def declares_architecture(model_dir: str | Path) -> bool:
    """True when the directory's config.json has an `architecture` key: this project's own
    format (Hugging Face configs have `architectures` and `model_type` instead)."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # the Hugging Face loader reports missing or broken files itself
    return isinstance(data, dict) and "architecture" in data


def load_bilstm(model_dir: str | Path) -> BiLSTMClassifier:
    """The BiLSTM of a directory written by `save_pretrained`, in eval mode; a `ValueError`
    naming the file and key when config.json or the weights do not fit."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    data = json.loads(path.read_text())
    if data.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path}: architecture: {data.get('architecture')!r} is not a known student "
                         f"architecture (expected {ARCHITECTURE!r}, or a Hugging Face config without the key)")
    try:
        config = BiLSTMConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: "
                             f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
    model = BiLSTMClassifier(config)
    try:
        model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)), strict=True)
    except RuntimeError as exc:  # shapes or names that do not match config.json
        raise ValueError(f"{model_dir / WEIGHTS_FILE}: does not match {path}: {exc}") from None
    return model.eval()


def project_embeddings(table: Tensor, dim: int | None) -> Tensor:
    """The table (V, H) itself when dim is None or H, else its rows projected onto the `dim`
    leading principal components (V, dim): the linear map that keeps most of the rows'
    variance, so the narrower table starts as close to the teacher's as `dim` allows."""
    if dim is None or dim == table.shape[1]:
        return table.clone()
    if dim > table.shape[1]:
        raise ValueError(f"embedding_dim {dim} is wider than the teacher's embeddings ({table.shape[1]})")
    centred = table.double() - table.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (H, H), rows = components
    return (centred @ vh[:dim].T).to(table.dtype)


def build_bilstm_student(teacher, tokenizer, cfg, texts: list[str], max_length: int,
                         seed: int) -> tuple[BiLSTMClassifier, object, list[int] | None, dict]:
    """A BiLSTM student (`cfg`: params.yaml `student:`, options in `student.bilstm`) whose
    embedding starts from the teacher's word embeddings, trimmed to the training texts'
    word pieces like the transformer student's. Returns (model, tokenizer, kept token ids,
    info), which `student.build_student` wraps in its `BuiltStudent`."""
    b = cfg.bilstm
    table = teacher.get_input_embeddings().weight.detach().float()  # (V, H)
    info: dict = {"architecture": ARCHITECTURE, "teacher_vocab": int(table.shape[0])}
    keep = None
    if cfg.trim_vocabulary:
        keep = plan_vocabulary(tokenizer, token_counts(tokenizer, texts, max_length), cfg.vocab_min_frequency)
        table, tokenizer = table[torch.tensor(keep)], trim_tokenizer(tokenizer, keep)
        info["vocab_size"] = len(keep)
    if b.embedding_dim is not None and b.embedding_dim > table.shape[1]:
        raise ConfigError(f"params.yaml: student.bilstm.embedding_dim: {b.embedding_dim} is wider than the "
                          f"teacher's word embeddings ({table.shape[1]}); use at most that, or null")
    table = project_embeddings(table, b.embedding_dim)
    torch.manual_seed(seed)
    config = BiLSTMConfig(vocab_size=table.shape[0], embedding_dim=table.shape[1], hidden_size=b.hidden_size,
                          num_layers=b.layers, dropout=b.dropout, pooling=b.pooling,
                          classifier_hidden=b.classifier_hidden, num_labels=teacher.config.num_labels,
                          pad_token_id=tokenizer.pad_token_id or 0)
    model = BiLSTMClassifier(config)
    with torch.no_grad():
        model.embeddings.weight.copy_(table)
    model.embeddings.weight.requires_grad_(not b.freeze_embeddings)
    info.update(embedding_dim=config.embedding_dim, hidden_size=b.hidden_size, layers=b.layers,
                pooling=b.pooling, frozen_embeddings=b.freeze_embeddings)
    return model, tokenizer, keep, info


__all__ = ["ARCHITECTURE", "BiLSTMClassifier", "BiLSTMConfig", "build_bilstm_student", "declares_architecture",
           "load_bilstm", "project_embeddings", "reverse_padded"]
