"""The native decoding kernels (biogpt/kernels/decode.c) against the same arithmetic written in PyTorch."""

import math

import pytest
import torch
import torch.nn.functional as F

from biogpt.backends.cpu import kernels
from biogpt.models.biogpt import BioGPTConfig, KVCache

amx = pytest.mark.skipif(not kernels.available(), reason="needs an x86 CPU with AMX int8 and a C compiler")


def reference_int8_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The kernel's numerics in PyTorch: int8 weights per output row, int8 activations per input row (scale
    max|x| / 127, x times its reciprocal, rounded half to even), exact integer sums, fp32 scaling."""
    ws = (w.abs().amax(1) / 127).clamp_min(1e-12)
    wq = torch.round(w / ws[:, None])
    xs = x.abs().amax(1) / 127
    xs = torch.where(xs > 0, xs, torch.ones_like(xs))
    xq = torch.round(x * (1 / xs)[:, None])
    acc = (xq.double() @ wq.double().T).float()  # integers, exact in double; one rounding to fp32 as int32 -> fp32
    return acc * xs[:, None] * ws[None, :] + (b if b is not None else 0)


@amx
@pytest.mark.parametrize("M,N,K", [(1, 64, 64), (3, 100, 70), (16, 192, 1024), (17, 200, 130), (40, 48, 24)])
def test_int8_linear_matches_reference(M, N, K):
    from biogpt.backends.cpu import AMXInt8Linear

    g = torch.Generator().manual_seed(M * 1000 + N + K)
    w, b, x = torch.randn(N, K, generator=g), torch.randn(N, generator=g), torch.randn(2, M, K, generator=g)
    x[0, 0] = 0  # an all-zero row (scale 1, no division by zero)
    for bias in (b, None):
        lin = AMXInt8Linear(w, bias)
        y = lin(x)
        ref = torch.stack([reference_int8_linear(r, w, bias) for r in x])
        assert y.shape == (2, M, N) and y.dtype == torch.float32
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()  # the same integers, then fp32 rounding
        exact = F.linear(x, w, bias)
        assert 0 < (y - exact).abs().max() <= 0.03 * exact.abs().max()  # and int8 rounding from fp32
        lin.gelu = True  # exact GELU fused into the output
        assert (lin(x) - F.gelu(ref)).abs().max() <= 1e-5 * ref.abs().max()
    assert AMXInt8Linear(w, b)(torch.zeros(0, K)).shape == (0, N)


@amx
@pytest.mark.parametrize("n_head,d_model", [(4, 128), (2, 256), (3, 96)])
def test_decode_attention_matches_sdpa(n_head, d_model):
    from biogpt.backends.cpu import DecodeAttention

    cfg = BioGPTConfig(vocab_size=100, n_layer=2, d_model=d_model, n_head=n_head, d_ffn=64, max_positions=64)
    B, D, s, layer = 3, d_model // n_head, 37, 1
    assert DecodeAttention.fits(D, cfg.max_positions)
    g = torch.Generator().manual_seed(n_head)
    cache = KVCache(cfg, B, 50, torch.bfloat16, torch.device("cpu"))
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    cache.length = s
    cache.valid[:, :s] = True
    cache.valid[1, :5] = False  # left padding of row 1 ...
    cache.k[layer, 1, :, :5] = float("nan")  # ... whose slots may hold anything: they must weigh nothing
    cache.v[layer, 1, :, :5] = float("nan")
    cache.valid[2, 20] = False
    cache.k[layer, :, :, s + 1 :] = float("nan")  # unfilled slots are never read
    qkv = torch.randn(B, 1, 3 * d_model, generator=g)
    before = cache.k.clone()

    out = DecodeAttention(n_head)(qkv, cache, layer)

    q, k, v = qkv.view(B, 1, 3, n_head, D).permute(2, 0, 3, 1, 4)  # [B, H, 1, D]
    assert torch.equal(cache.k[layer, :, :, s : s + 1], k.to(torch.bfloat16))  # written as a PyTorch cast
    assert torch.equal(cache.v[layer, :, :, s : s + 1], v.to(torch.bfloat16))
    assert torch.equal(cache.k[0], before[0])  # other layers untouched
    mask = cache.valid[:, None, None, : s + 1].clone()
    mask[..., s] = True
    K, V = cache.k[layer, :, :, : s + 1].float(), cache.v[layer, :, :, : s + 1].float()
    K, V = K.nan_to_num(), V.nan_to_num()  # masked slots: SDPA would still multiply NaN by 0
    ref = F.scaled_dot_product_attention(q, K, V, attn_mask=mask).transpose(1, 2).reshape(B, 1, d_model)
    assert out.shape == (B, 1, d_model) and (out - ref).abs().max() <= 2e-6 * math.sqrt(D)

    with pytest.raises(ValueError, match="one fp32 token per row and a bf16 cache"):
        DecodeAttention(n_head)(qkv.double(), cache, layer)
    assert not DecodeAttention.fits(24, 64) and not DecodeAttention.fits(64, 8192)


def _tiny():
    from biogpt.models.biogpt import BioGPT

    cfg = BioGPTConfig(vocab_size=100, n_layer=1, d_model=64, n_head=2, d_ffn=128, max_positions=32)
    return BioGPT(cfg).eval()


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """An empty kernel cache in tmp_path and no library loaded yet; the loaded one is forgotten after."""
    monkeypatch.setenv("BIOGPT_CACHE_DIR", str(tmp_path))
    kernels.decode_kernels.cache_clear()
    yield tmp_path / "kernels"
    kernels.decode_kernels.cache_clear()


def test_cpu_without_amx_falls_back(fresh_kernels, monkeypatch):
    from biogpt.backends.cpu import Int8Linear, QuantizationError, quantize_int8

    monkeypatch.setattr(kernels, "_cpu_flags", lambda: {"avx512f"})
    with pytest.raises(kernels.KernelUnavailable, match="lacks .*amx_int8"):
        kernels.decode_kernels()
    with pytest.raises(QuantizationError, match="AMX int8 kernels cannot run: this CPU lacks"):
        quantize_int8(_tiny(), amx=True)
    m = quantize_int8(_tiny())  # the default falls back to PyTorch's quantized Linear and attention
    assert isinstance(m.blocks[0].qkv, Int8Linear) and m.blocks[0].decode_attention is None
    assert m.cache_dtype is None and not fresh_kernels.exists()  # nothing was built


@pytest.mark.skipif(not kernels._CPU_FLAGS <= kernels._cpu_flags(), reason="the build is only tried on AMX CPUs")
def test_kernel_build_errors_and_cache(fresh_kernels, monkeypatch):
    from biogpt.backends.cpu import AMXInt8Linear, quantize_int8

    monkeypatch.setenv("CC", str(fresh_kernels / "no-such-cc"))
    with pytest.raises(kernels.KernelUnavailable, match="no C compiler"):
        kernels.decode_kernels()
    kernels.decode_kernels.cache_clear()
    monkeypatch.setenv("CC", "false")  # a compiler that fails: nothing half-written is left in the cache
    with pytest.raises(kernels.KernelUnavailable, match="false could not build decode.c"):
        kernels.decode_kernels()
    assert not list(fresh_kernels.iterdir())
    monkeypatch.delenv("CC")
    kernels.decode_kernels.cache_clear()
    (fresh_kernels / "decode-0123456789abcdef.so").write_bytes(b"a build of an earlier version")
    assert isinstance(quantize_int8(_tiny()).blocks[0].qkv, AMXInt8Linear)
    built = list(fresh_kernels.iterdir())  # the earlier version's build is gone
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    kernels.decode_kernels.cache_clear()
    kernels.decode_kernels()  # a second process finds it built
    assert built[0].stat().st_mtime_ns == stamp and list(fresh_kernels.iterdir()) == built
