"""Baseline C's recipe, in a module of its own so the memory probe can use it without
importing the ONNX stack: torch.ao.quantization.quantize_dynamic on the fp32 teacher."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

TORCH_INT8_FILE = "model.pt"


def quantize_torch_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """int8 weights for every nn.Linear, activations quantized per batch; embeddings stay fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in torch 2.13 (still works)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def save_torch_int8(model: torch.nn.Module, out_dir: Path) -> Path:
    """What a PyTorch-only user ships: the quantized state dict (torch.save; we never load it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TORCH_INT8_FILE
    torch.save(model.state_dict(), path)
    return path
