"""Fast CPU inference: prepacked bf16 and int8 forms of a model, and biogpt's own native decoding kernels."""

from biogpt.backends.cpu.forms import (
    AMXInt8Linear,
    DecodeAttention,
    Int8Linear,
    PackedBF16Linear,
    can_pack_bf16,
    native_bf16,
    pack_bf16,
    quantize_int8,
)
from biogpt.errors import QuantizationError

__all__ = ["AMXInt8Linear", "DecodeAttention", "Int8Linear", "PackedBF16Linear", "QuantizationError", "can_pack_bf16",
           "native_bf16", "pack_bf16", "quantize_int8"]  # fmt: skip
