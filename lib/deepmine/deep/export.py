"""Exported models: TorchScript (traced), and the CNN dynamically quantized to int8.

Dynamic quantization stores the weights of the `nn.Linear` layers as int8 and quantizes their
activations on the fly; convolutions stay float (PyTorch's dynamic quantization covers Linear and
recurrent layers only). The CNN's dense head holds most of its weights, so the file shrinks about 3x.
ONNX is not offered: the `onnx` package is not part of the pinned stack.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model traced on `example`, saved as a TorchScript archive (`torch.jit.load` reads it)."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return buf.getvalue()


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with its Linear layers dynamically quantized to int8 (CPU inference)."""
    import copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear},
                                                      dtype=torch.qint8)


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(torch.from_numpy(x[i:i + batch]))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(len(x), 1)
