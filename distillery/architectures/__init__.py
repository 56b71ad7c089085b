"""One adapter per encoder family behind one interface (base.py); registry.py maps
`config.model_type` to its adapter."""

from distillery.architectures.base import Adapter, Slot, UnsupportedArchitecture
from distillery.architectures.registry import ADAPTERS, adapter_for, adapter_for_type, supported_model_types

__all__ = ["ADAPTERS", "Adapter", "Slot", "UnsupportedArchitecture", "adapter_for", "adapter_for_type",
           "supported_model_types"]
