"""The adapters, keyed by `config.model_type`."""

from __future__ import annotations

from distillery.architectures.base import Adapter, UnsupportedArchitecture
from distillery.architectures.bert import BertAdapter
from distillery.architectures.deberta_v2 import DebertaV2Adapter
from distillery.architectures.distilbert import DistilBertAdapter
from distillery.architectures.electra import ElectraAdapter
from distillery.architectures.modernbert import ModernBertAdapter
from distillery.architectures.roberta import RobertaAdapter

ADAPTERS: dict[str, Adapter] = {t: a for a in (BertAdapter(), RobertaAdapter(), DistilBertAdapter(), ElectraAdapter(),
                                               DebertaV2Adapter(), ModernBertAdapter()) for t in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for_type(model_type: str | None) -> Adapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported; supported encoder families (config.model_type): "
            f"{', '.join(supported_model_types())}") from None


def adapter_for(model) -> Adapter:
    """The adapter of a transformers model (or of its config)."""
    config = getattr(model, "config", model)
    return adapter_for_type(getattr(config, "model_type", None))
