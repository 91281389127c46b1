"""Inference-only CPU forms of a model, beside the exact fp32 one: prepacked bf16 and int8 weights.

Decoding a few rows at a time reads every weight once per step, so its speed is set by how fast the weights
stream in and are turned into products.

- `pack_bf16(model)`: bf16 weights reordered once into oneDNN's blocked layout, so every matmul uses the
  AMX/AVX512-BF16 kernels without re-laying the weight out on each call (what a plain bf16 `F.linear` does).
  Same numerics as the bf16 model (bf16 inputs and weights, fp32 accumulation); measured 1.3-1.5x faster
  Linears at batch 1-16 and faster prefill on an AMX CPU (benchmarks/bench_generate.py).
- `quantize_int8(model)`: every block Linear and the tied output head become PyTorch's dynamically
  quantized Linear (fbgemm/x86 or qnnpack, whichever the CPU build uses):
  - weights: int8, symmetric, one scale per output row (per channel), quantized once here;
  - activations: uint8 with one scale and zero point per call, computed from the input rows of that call
    (so, unlike fp32, a row's result can depend slightly on the other rows of the batch);
  - int32 accumulation, fp32 bias and output. LayerNorm, attention, the KV cache and the embeddings stay fp32.
  A quarter of fp32's bytes: the fastest form for a single sequence.

Both are approximate (measured against fp32 in tests/test_model.py and benchmarks/bench_generate.py) and for
inference only: save or convert the fp32 model instead.
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
    """An inference form cannot be made: int8 off the CPU or without a quantized engine, or a model that is
    already in one of these forms."""


class PackedBF16Linear(nn.Module):
    """y = x W^T + b in bf16 with W reordered once into oneDNN's blocked layout (an opaque tensor)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous())
        self._bias = bias.detach().to(torch.bfloat16).contiguous() if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., in] bf16 -> [..., out] bf16; oneDNN takes 2-D input
        x2 = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(x2, self._packed, self._bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16 prepacked"


def native_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def can_pack_bf16() -> bool:
    """True where the CPU has native bf16 and this build has oneDNN's packed Linear."""
    return (
        native_bf16()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack_bf16(model: BioGPT) -> BioGPT:
    """Turn `model` (in place) into bf16 with prepacked Linears and output head, and return it.

    Off the CPU, or where the CPU or build cannot (see can_pack_bf16), the model is only cast to bf16: the same
    results, without the speed-up."""
    _check_plain(model)
    model.to(torch.bfloat16).eval()
    if model.tok_emb.weight.device.type != "cpu" or not can_pack_bf16():
        return model
    return _replace_linears(model, PackedBF16Linear)


def _check_plain(model: BioGPT) -> None:
    if model.head is not None or not isinstance(model.blocks[0].qkv, nn.Linear):
        raise QuantizationError(
            f"the model is already in an inference form ({type(model.blocks[0].qkv).__name__}); "
            "load the checkpoint again to choose another"
        )


def _replace_linears(model: BioGPT, form: type[nn.Module]) -> BioGPT:
    """Every block Linear and the tied output head in `form`, built from their weight and bias."""
    for block in model.blocks:
        for name in ("qkv", "out", "fc1", "fc2"):
            lin = getattr(block, name)
            setattr(block, name, form(lin.weight, lin.bias))
    model.head = form(model.tok_emb.weight, None)
    return model


def _engine_available() -> bool:
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    return hasattr(torch.ops.quantized, "linear_dynamic") and bool(engines)


def quantize_int8(model: BioGPT) -> BioGPT:
    """Turn `model` (in place) into its int8-weight inference form and return it; it must be on the CPU."""
    if model.tok_emb.weight.device.type != "cpu":
        raise QuantizationError("int8 mode runs on the CPU; use --dtype bf16 or fp32 on other devices")
    if not _engine_available():
        raise QuantizationError("this PyTorch build has no quantized CPU engine; use --dtype bf16 or fp32")
    _check_plain(model)
    model.float().eval()
    return _replace_linears(model, Int8Linear)
