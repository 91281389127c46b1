"""Inference-only CPU forms of a model, beside the exact fp32 one: prepacked bf16 and int8 weights.

Decoding a few rows at a time reads every weight once per step, so its speed is set by how fast the weights
stream in and are turned into products.

- `pack_bf16(model)`: bf16 weights reordered once into oneDNN's blocked layout, so every matmul uses the
  AMX/AVX512-BF16 kernels without re-laying the weight out on each call (what a plain bf16 `F.linear` does).
  Same numerics as the bf16 model (bf16 inputs and weights, fp32 accumulation); measured 1.3-1.5x faster
  Linears at batch 1-16 and faster prefill on an AMX CPU (benchmarks/bench_generate.py).
- `quantize_int8(model)`: every block Linear and the tied output head get int8 weights, symmetric, one scale
  per output row, quantized once here; int32 accumulation, fp32 bias and output. LayerNorm and the embeddings
  stay fp32. A quarter of fp32's bytes: the fastest form. Three forms, by CPU:
  - on CPUs with AMX (Sapphire Rapids and later), biogpt's own (biogpt/backends/cpu/kernels/decode.c,
    `AMXInt8Linear`, `DecodeAttention`): activations int8, symmetric, one scale per row, so a row's result
    never depends on the other rows of the batch; it streams the weights at close to memory speed; exact GELU
    fused into the first MLP Linear; decoding attention over a bf16 KV cache;
  - elsewhere, PyTorch's dynamically quantized Linear (fbgemm/x86 or qnnpack, `Int8Linear`): activations
    uint8 with one scale and zero point per call, computed from all the rows of that call. On CPUs with
    AVX512-BF16 (Cooper Lake, Zen 4 and later) decoding steps still use biogpt's `DecodeAttention` over a bf16
    KV cache (at batch 16 after BC5CDR abstracts, reading an fp32 cache took longer than the int8 weights);
    elsewhere attention and the KV cache stay fp32.
  A failure to build or load biogpt's kernels on a CPU that could run them (no C compiler, say) falls back to
  PyTorch's Linear and attention with one RuntimeWarning saying why; `amx=True` turns it into a
  QuantizationError.
- `quantize_int8_reference(model)`: the AMX form's arithmetic in plain PyTorch ops (`ReferenceInt8Linear`,
  `ReferenceDecodeAttention`): the same model layout (fused GELU, bf16 KV cache, decoding attention) on any
  machine, slowly. It is what the kernels are tested against, and lets the numerics of the AMX form be
  measured where there is no AMX.

Both families take these forms (BioGPT, and the GPT-2 family: BioMedLM): their blocks share the names replaced
here. A GPT-2 block's tanh GELU is not fused into fc1, and its decoding attention gets q already scaled by any
factor beyond 1/sqrt(D) (BioMedLM's 1/(layer + 1)), so the kernels are the same.

The int8 forms are approximate (measured against fp32 in tests/test_cpu_kernels.py and
benchmarks/bench_generate.py) and for inference only: save or convert the fp32 model instead.
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from biogpt.backends.cpu.kernels import KernelBuildError, KernelUnavailable, decode_kernels, missing_amx, unsupported
from biogpt.errors import QuantizationError
from biogpt.models.biogpt import BioGPT
from biogpt.models.cache import KVCache
from biogpt.models.gpt2 import GPT2

Model = BioGPT | GPT2  # the families share the names these forms replace (blocks[i].qkv/out/fc1/fc2, head)


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


class AMXInt8Linear(nn.Module):
    """y = x W^T + b with W held as int8 AMX tiles (layout: kernels/decode.c), run by that kernel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float()  # [N, K]
        N, K = w.shape
        self.out_features, self.in_features = N, K
        Np, Kp = -(-N // 64) * 64, -(-K // 64) * 64  # zero padded to whole tile groups
        self._k_padded = Kp
        qw, scale = quantize_weight_rows(w)  # [N, K] int8, [N]
        q = torch.zeros(Np, Kp, dtype=torch.int8)
        q[:N, :K] = qw
        # [Np, Kp] -> [group, kb, j, r, c, i]: row g*64 + 16j + c, column kb*64 + 4r + i
        self._tiles = q.view(Np // 64, 4, 16, Kp // 64, 16, 4).permute(0, 3, 1, 4, 2, 5).contiguous()
        self._scale = torch.zeros(Np)
        self._scale[:N] = scale
        self._bias = bias.detach().float().contiguous() if bias is not None else None
        if missing_amx() is not None:  # the library also loads on CPUs without AMX, for its decode attention
            raise KernelUnavailable(missing_amx())
        self._kernel = decode_kernels().biogpt_int8_linear
        self.gelu = False  # True: the output goes through exact GELU in the kernel (the block's act is then Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, N = self.in_features, self.out_features
        x2 = x.reshape(-1, K).float().contiguous()  # [M, K]
        M = x2.shape[0]
        y = torch.empty(M, N)
        if M:
            work = self._workspace(M * self._k_padded + 4 * M)  # int8 rows + their scales
            bias = self._bias.data_ptr() if self._bias is not None else None
            self._kernel(x2.data_ptr(), M, K, self._tiles.data_ptr(), self._scale.data_ptr(), bias, int(self.gelu), N,
                         y.data_ptr(), work.data_ptr(), torch.get_num_threads())  # fmt: skip
        return y.view(*x.shape[:-1], N)

    def _workspace(self, nbytes: int) -> torch.Tensor:
        """Scratch bytes for the quantized activations, kept between calls (one buffer per thread, grown to the
        largest call): a decoding step then allocates nothing for it."""
        local = _scratch.__dict__
        buf = local.get("buf")
        if buf is None or buf.numel() < nbytes:
            buf = local["buf"] = torch.empty(nbytes, dtype=torch.int8)
        return buf

    def extra_repr(self) -> str:
        gelu = ", then GELU" if self.gelu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 AMX{gelu}"


_scratch = threading.local()  # AMXInt8Linear's scratch buffer, shared by every layer that a thread runs


class DecodeAttention(nn.Module):
    """Attention of one new token per row over a bf16 KV cache, by biogpt/backends/cpu/kernels/decode.c: it writes the
    token's key and value into the cache and reads every cached slot once, in fp32 arithmetic."""

    MAX_HEAD_DIM, MAX_SLOTS = 256, 4096  # the kernel's limits (head dim also a multiple of 32)

    def __init__(self, n_head: int):
        super().__init__()
        self.n_head = n_head
        self._kernel = decode_kernels().biogpt_decode_attention

    @classmethod
    def fits(cls, head_dim: int, max_positions: int) -> bool:
        return head_dim % 32 == 0 and head_dim <= cls.MAX_HEAD_DIM and max_positions <= cls.MAX_SLOTS

    def forward(self, qkv: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        B, T, d3 = qkv.shape  # [B, 1, 3d] fp32: q, k, v of the new token
        d, H = d3 // 3, self.n_head
        if T != 1 or cache.k.dtype != torch.bfloat16 or qkv.dtype != torch.float32:
            raise ValueError("DecodeAttention takes one fp32 token per row and a bf16 cache (model.new_cache)")
        qkv, valid = qkv.contiguous(), cache.valid.contiguous()
        out = torch.empty(B, 1, d)
        k, v = cache.k[layer], cache.v[layer]  # [B, H, S_max, D], contiguous
        self._kernel(qkv.data_ptr(), B, H, d // H, k.data_ptr(), v.data_ptr(), cache.max_len, cache.length,
                     valid.data_ptr(), out.data_ptr(), torch.get_num_threads())  # fmt: skip
        return out


def quantize_weight_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (int8 [N, K], fp32 scales [N]): symmetric, one scale per output row, max|w| / 127 (an
    all-zero row gets 1e-12, so nothing divides by zero), w / scale rounded half to even. The AMX kernels' and
    the reference's weights."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
    return torch.round(w / scale[:, None]).to(torch.int8), scale


def quantize_activation_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] fp32 -> (int8 [M, K], fp32 scales [M]) as decode.c's quantize_row does it: scale max|x| / 127 per
    row (1 for an all-zero row), x times the fp32 reciprocal of the scale (not divided by it: the kernel
    multiplies), rounded half to even, saturated to int8."""
    amax = x.abs().amax(1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(x * (1 / scale)[:, None]).clamp(-128, 127)
    return q.to(torch.int8), scale


class ReferenceInt8Linear(nn.Module):
    """AMXInt8Linear's arithmetic in PyTorch ops, on any machine: int8 weights per output row, int8 activations
    per input row, exact integer sums (in float64, exact below 2^53 = far above 127 * 128 * K), one rounding of
    the sums to fp32 (the kernel's int32 -> fp32), then acc * x_scale * w_scale + bias as the kernel's fused
    multiply-add (the product exact in float64, one rounding to fp32), then exact GELU if `gelu`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        qw, scale = quantize_weight_rows(weight)
        self.register_buffer("qweight", qw, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        b = bias.detach().float().contiguous() if bias is not None else None
        self.register_buffer("bias", b, persistent=False)
        self.gelu = False  # True: the output goes through exact GELU (the block's act is then Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()
        xq, xs = quantize_activation_rows(x2)
        acc = (xq.double() @ self.qweight.double().T).float()  # [M, N] integers, then the kernel's one rounding
        y = (acc * xs[:, None]).double() * self.scale.double()
        if self.bias is not None:
            y = y + self.bias.double()
        y = y.float()
        if self.gelu:
            y = F.gelu(y)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        gelu = ", then GELU" if self.gelu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 reference{gelu}"


class ReferenceDecodeAttention(nn.Module):
    """DecodeAttention's arithmetic in PyTorch ops, on any machine: the new token's key and value written to the
    bf16 cache by a PyTorch cast (round to nearest even, as the kernel's), then fp32 attention of q / sqrt(D)
    (the scale rounded to fp32 as the kernel's 1.f / sqrtf(D)) over the real cached slots and the new one."""

    def __init__(self, n_head: int):
        super().__init__()
        self.n_head = n_head

    def forward(self, qkv: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        B, T, d3 = qkv.shape  # [B, 1, 3d] fp32: q, k, v of the new token
        d, H = d3 // 3, self.n_head
        D = d // H
        if T != 1 or cache.k.dtype != torch.bfloat16 or qkv.dtype != torch.float32:
            raise ValueError("DecodeAttention takes one fp32 token per row and a bf16 cache (model.new_cache)")
        q, k, v = qkv.view(B, 3, H, D).unbind(1)  # [B, H, D]
        s = cache.length
        cache.k[layer, :, :, s] = k
        cache.v[layer, :, :, s] = v
        seen = cache.valid[:, : s + 1].clone()
        seen[:, s] = True  # the new token always sees itself (the kernel's rule, padding queries included)
        seen = seen[:, None, :]  # [B, 1, S]
        K = cache.k[layer, :, :, : s + 1].float()  # [B, H, S, D]; slots past s are never read
        V = cache.v[layer, :, :, : s + 1].float().masked_fill(~seen[..., None], 0)  # padding may hold anything
        scale = 1 / torch.tensor(float(D), device=qkv.device).sqrt()
        scores = torch.einsum("bhd,bhsd->bhs", q * scale, K).masked_fill(~seen, float("-inf"))
        out = torch.einsum("bhs,bhsd->bhd", torch.softmax(scores, -1), V)
        return out.reshape(B, 1, d)


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


def pack_bf16(model: Model) -> Model:
    """Turn `model` (in place) into bf16 with prepacked Linears and output head, and return it.

    Off the CPU, or where the CPU or build cannot (see can_pack_bf16), the model is only cast to bf16: the same
    results, without the speed-up."""
    _check_plain(model)
    model.to(torch.bfloat16).eval()
    if model.tok_emb.weight.device.type != "cpu" or not can_pack_bf16():
        return model
    return _replace_linears(model, PackedBF16Linear)


def _check_plain(model: Model) -> None:
    if model.head is not None or not isinstance(model.blocks[0].qkv, nn.Linear):
        raise QuantizationError(
            f"the model is already in an inference form ({type(model.blocks[0].qkv).__name__}); "
            "load the checkpoint again to choose another"
        )


def _replace_linears(model: Model, form: type[nn.Module]) -> Model:
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


def quantize_int8(model: Model, amx: bool | None = None) -> Model:
    """Turn `model` (in place) into its int8-weight inference form and return it; it must be on the CPU.

    amx: None picks the fastest form this CPU runs: biogpt's AMX kernels (int8 Linear and decode attention) on
    AMX CPUs; PyTorch's quantized Linear with biogpt's decode attention over a bf16 KV cache on other CPUs with
    AVX512-BF16; PyTorch's quantized Linear and attention elsewhere. Where the CPU could run biogpt's kernels
    but they could not be built or loaded, one RuntimeWarning says why. True requires the AMX kernels
    (QuantizationError saying why not); False uses PyTorch's only (no native code)."""
    if model.tok_emb.weight.device.type != "cpu":
        raise QuantizationError("int8 mode runs on the CPU; use --dtype bf16 or fp32 on other devices")
    _check_plain(model)
    if amx and (unsupported() or missing_amx()) is not None:
        raise QuantizationError(f"the AMX int8 kernels cannot run: {unsupported() or missing_amx()}")
    native_attention = False
    if amx is not False:
        try:
            decode_kernels()
        except KernelUnavailable as e:
            if amx:
                raise QuantizationError(f"the AMX int8 kernels cannot run: {e}") from e
            if isinstance(e, KernelBuildError):  # not the expected fallback of a CPU without AVX512: say why
                warnings.warn(
                    f"biogpt's native CPU kernels cannot run ({e}); using PyTorch's quantized Linear and attention "
                    "instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            if missing_amx() is None:
                return _kernel_form(model, AMXInt8Linear, DecodeAttention)
            native_attention = True
    if not _engine_available():
        raise QuantizationError("this PyTorch build has no quantized CPU engine; use --dtype bf16 or fp32")
    _replace_linears(model.float().eval(), Int8Linear)
    return _with_decode_attention(model, DecodeAttention) if native_attention else model


def quantize_int8_reference(model: Model) -> Model:
    """Turn `model` (in place) into the AMX int8 form's arithmetic written in PyTorch ops, and return it.

    The same form as `quantize_int8(model, amx=True)` (int8 Linears with GELU fused into fc1; where the kernel
    fits the head size, a bf16 KV cache and the decoding attention), on any machine and without a compiler, but
    slow: for testing and measuring the AMX form's numerics where there is no AMX."""
    _check_plain(model)
    return _kernel_form(model, ReferenceInt8Linear, ReferenceDecodeAttention)


def _kernel_form(model: Model, linear: type[nn.Module], attention: type[nn.Module]) -> Model:
    """The AMX form's layout with `linear` and `attention` as its kernels (the AMX ones or the reference)."""
    _replace_linears(model.float().eval(), linear)
    for block in model.blocks:
        if isinstance(block.act, nn.GELU) and block.act.approximate == "none":
            block.fc1.gelu, block.act = True, nn.Identity()  # exact GELU in fc1's kernel: one pass less
        # (GPT-2's tanh GELU, gelu_new, stays a separate step: the kernel fuses only the exact one)
    return _with_decode_attention(model, attention)


def _with_decode_attention(model: Model, attention: type[nn.Module]) -> Model:
    """Decoding steps through `attention` over a bf16 KV cache, where the kernel fits the head size."""
    cfg = model.config
    if DecodeAttention.fits(cfg.d_model // cfg.n_head, cfg.max_positions):
        model.cache_dtype = torch.bfloat16  # half the bytes to read per step; keys and values to 8 bits
        for block in model.blocks:
            block.decode_attention = attention(cfg.n_head)
    return model
