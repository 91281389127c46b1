"""Int8 weights for fast CPU decoding: an approximate mode beside bf16; fp32 stays the exact one.

Decoding a few rows at a time reads every weight once per step, so its speed is set by memory bandwidth:
int8 weights are a quarter of fp32's bytes and half of bf16's. Every block Linear and the tied output head
become PyTorch's dynamically quantized Linear (fbgemm/x86 or qnnpack, whichever the CPU build uses):

- weights: int8, symmetric, one scale per output row (per channel), quantized once here;
- activations: uint8 with one scale and zero point per call, computed from the input rows of that call
  (so, unlike fp32, a row's result can depend slightly on the other rows of the batch);
- int32 accumulation, fp32 bias and output. LayerNorm, attention, the KV cache and the embeddings stay fp32.

Measured against fp32 on the same weights, see tests/test_model.py and benchmarks/bench_generate.py. A
quantized model is for inference only: save or convert the fp32 model instead.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from biogpt.model import BioGPT


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 rows in the quantized engine's packed layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float().contiguous()  # [out, in]
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()  # [out]
        zero = torch.zeros(self.out_features, dtype=torch.long)
        b = bias.detach().float().contiguous() if bias is not None else None
        with warnings.catch_warnings():
            # quantized tensors are only the hand-over format to the engine's weight packing
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qw, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, which keeps fbgemm's int16 pair sums from saturating
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).float(), self._packed, True)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class QuantizationError(ValueError):
    """int8 mode cannot run here (wrong device, or no quantized CPU engine in this PyTorch build)."""


def _engine_available() -> bool:
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    return hasattr(torch.ops.quantized, "linear_dynamic") and bool(engines)


def quantize_int8(model: BioGPT) -> BioGPT:
    """Turn `model` (in place) into its int8-weight inference form and return it; it must be on the CPU."""
    if model.tok_emb.weight.device.type != "cpu":
        raise QuantizationError("int8 mode runs on the CPU; use --dtype bf16 or fp32 on other devices")
    if not _engine_available():
        raise QuantizationError("this PyTorch build has no quantized CPU engine; use --dtype bf16 or fp32")
    model.float().eval()
    for block in model.blocks:
        for name in ("qkv", "out", "fc1", "fc2"):
            lin = getattr(block, name)
            setattr(block, name, Int8Linear(lin.weight, lin.bias))
    model.head = Int8Linear(model.tok_emb.weight, None)
    return model
