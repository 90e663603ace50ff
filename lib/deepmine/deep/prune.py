"""Pruning: global magnitude pruning of a trained model, fine-tuned through the same trainer.

`prune.sparsity` of the weights of every convolution and linear layer, the smallest in absolute
value across all of them together (global L1 unstructured pruning, torch.nn.utils.prune; Han et
al. 2015), are set to zero and kept there by masks while the model is fine-tuned from the dense
weights for `prune.epochs`. Afterwards the masks are made permanent (`dense_state`): the weights
are ordinary tensors with zeros in them, which the models and batch inference load as any
other. Zeros buy size (the file compresses: `gzip_bytes`), not speed: dense kernels multiply
zeros as fast as any number, so the time per image stays about the dense model's; channel
(structured) pruning, which would buy time, is not offered.
"""
from __future__ import annotations

import gzip
import io
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def apply_global_pruning(model: nn.Module, sparsity: float) -> None:
    """Mask the `sparsity` share of all prunable weights smallest in magnitude (in place; the
    masks stay while the model trains)."""
    torch_prune.global_unstructured(prunable(model), pruning_method=torch_prune.L1Unstructured,
                                    amount=float(sparsity))


def dense_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pruned model's state_dict with its masks made permanent: `<w>_orig` * `<w>_mask` as `<w>`."""
    out = {}
    for key, value in state.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[:-len("_orig")]
            out[base] = value * state[f"{base}_mask"]
        else:
            out[key] = value
    return out


def nonzero_share(model: nn.Module) -> float:
    """The share of the prunable weights that are not zero (int8 Linear layers included)."""
    total = nonzero = 0
    for m in model.modules():
        weight = None
        if isinstance(m, PRUNABLE):
            weight = m.weight.detach()
        elif hasattr(m, "weight") and callable(getattr(m, "weight")):  # dynamic int8 Linear
            weight = m.weight().dequantize()
        if weight is not None:
            total += weight.numel()
            nonzero += int((weight != 0).sum())
    return nonzero / max(total, 1)


def gzip_bytes(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


def state_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


@torch.no_grad()
def ms_per_image(model: nn.Module, x: np.ndarray, repeats: int = 3) -> float:
    """Milliseconds per image on one CPU thread, batches of 256, best of `repeats`."""
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(x), 256):
                model(torch.from_numpy(x[i:i + 256]))
            best = min(best, time.perf_counter() - start)
        return 1000.0 * best / max(len(x), 1)
    finally:
        torch.set_num_threads(threads)
