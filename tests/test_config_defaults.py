"""One source of defaults: a params file that leaves out every optional key gets exactly the
values the shipped params.yaml documents (the schema's defaults and params.yaml agree)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from distillery.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]
# What the shipped file says about *its* dataset (the demo data), not a default: the demo's label
# set is declared for the checks it enables; the schema's default (null = inferred from train)
# is what any other dataset gets.
DATASET_KEYS = {"data.labels"}


def required_keys(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Dotted keys the schema has no default for (a params file must state them)."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        if field.is_required():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += required_keys(ann, f"{key}.")
            else:
                out.append(key)
    return out


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def minimal_params(full: dict) -> dict:
    raw: dict = {}
    for key in required_keys():
        node_src, node_dst = full, raw
        *parents, last = key.split(".")
        for p in parents:
            node_src, node_dst = node_src[p], node_dst.setdefault(p, {})
        node_dst[last] = node_src[last]
    return raw


def test_omitted_optional_keys_get_params_yaml_values(tmp_path):
    documented = load_params(ROOT / "params.yaml", check_files=False).as_dict()
    minimal = minimal_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert minimal == {"data": {"train_path": documented["data"]["train_path"],
                                "eval_path": documented["data"]["eval_path"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(minimal))
    defaults = load_params(tmp_path / "params.yaml", check_files=False).as_dict()
    a, b = flat(documented), flat(defaults)
    differing = [f"{k}: params.yaml {a.get(k, '<absent>')!r}, schema default {b.get(k, '<absent>')!r}"
                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in DATASET_KEYS]
    assert not differing, "schema defaults differ from params.yaml:\n" + "\n".join(differing)


def test_every_key_is_stated_in_params_yaml():
    """The shipped file documents every key (none left to a default only the code knows)."""
    raw = flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
    schema = flat(load_params(ROOT / "params.yaml", check_files=False).as_dict())
    assert sorted(set(schema) - set(raw)) == []


def test_dataset_keys_really_are_dataset_specific():
    """The exemption stays honest: each exempted key is set in params.yaml and the schema's
    default for it is the dataset-neutral one (null)."""
    for key in DATASET_KEYS:
        section, name = key.split(".")
        assert Params.model_fields[section].annotation.model_fields[name].default is None, key
        assert yaml.safe_load((ROOT / "params.yaml").read_text())[section][name] is not None, key
