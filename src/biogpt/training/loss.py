"""The training losses: for the decoder-only models, the output head and next-token cross-entropy computed
together, in row chunks, exactly; for BiomedGPT (OFA), fairseq's label-smoothed cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biogpt.models.biogpt import PAD_ID


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, y_i) over rows with y_i != ignore, never holding all [N, V] logits at once.

    The gradients are formed during the forward pass (softmax - one-hot, then the two matmuls) and kept
    for backward: [N, d] and [V, d] instead of [N, V] logits in fp32, which for a 42k-token vocabulary are
    the bulk of a small model's training memory traffic. Softmax rows are formed `chunk` at a time, so
    that they stay in cache. In bf16 their rounded copies are gathered into groups of GROUP_ROWS rows,
    and the weight gradient is accumulated once per group: converting and adding a [V, d] fp32 product
    per chunk would cost more than the chunk's own work. In fp32 it is accumulated in place per chunk.
    """

    GROUP_ROWS = 1024

    @staticmethod
    def forward(ctx, h, W, y, ignore_index: int, chunk: int):
        N, V = h.shape[0], W.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if need else None
        gW = torch.zeros(W.shape, dtype=torch.float32, device=W.device) if need else None
        exact = h.dtype == torch.float32
        group = chunk if exact else max(chunk, _LinearCrossEntropy.GROUP_ROWS // chunk * chunk)
        buf = None if exact or not need else torch.empty(min(group, N), V, dtype=h.dtype, device=h.device)
        # per-chunk scratch, allocated once: fresh [chunk, V] tensors each chunk cost page faults
        c = min(chunk, N)
        logits_buf = torch.empty(c, V, dtype=h.dtype, device=h.device)
        f32_buf = None if exact else torch.empty(c, V, dtype=torch.float32, device=h.device)
        lp_buf = torch.empty(c, V, dtype=torch.float32, device=h.device)
        rows = torch.arange(c, device=h.device)
        for g0 in range(0, N, group):
            hg, yg = h[g0 : g0 + group], y[g0 : g0 + group]
            for s in range(0, len(yg), chunk):
                ys = yg[s : s + chunk]
                n = len(ys)
                logits = torch.mm(hg[s : s + chunk], W.t(), out=logits_buf[:n])  # [n, V]
                if not exact:
                    logits = f32_buf[:n].copy_(logits)
                lp = torch.log_softmax(logits, -1, out=lp_buf[:n])  # fp32 log-probabilities
                valid = ys != ignore_index
                yc = ys.clamp_min(0)
                loss -= (lp.gather(1, yc[:, None]).squeeze(1) * valid).sum()
                if need:
                    g = lp.exp_()  # softmax, in place
                    g[rows[:n], yc] -= 1
                    if not bool(valid.all()):
                        g[~valid] = 0
                    if exact:
                        torch.mm(g, W, out=gh[g0 + s : g0 + s + n])
                        gW.addmm_(g.t(), hg[s : s + chunk])
                    else:
                        buf[s : s + n] = g
            if need and not exact:
                G = buf[: len(yg)]  # [rows of the group, V] in h's dtype
                torch.mm(G, W, out=gh[g0 : g0 + len(yg)])
                gW += (G.t() @ hg).float()
        if need:  # validation runs without gradients and keeps nothing
            ctx.save_for_backward(gh, gW.to(W.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad):
        gh, gW = ctx.saved_tensors
        return gh * grad, gW * grad, None, None, None


def lm_loss(model, x: torch.Tensor, y: torch.Tensor, fused: bool = True, chunk: int = 128) -> torch.Tensor:
    """Summed next-token cross-entropy of targets y [B, T] (PAD_ID ignored) for inputs x [B, T].

    `model` may be DDP-wrapped. fused=False computes the full logits (needed under FSDP, where the tied
    weight is sharded outside the forward)."""
    mask = (x != PAD_ID).long() if (x == PAD_ID).any() else None
    if not fused:
        logits = model(x, mask)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=PAD_ID, reduction="sum")
    h = model(x, mask, return_hidden=True)
    W = getattr(model, "module", model).tok_emb.weight
    if torch.is_autocast_enabled(h.device.type):
        W = W.to(torch.get_autocast_dtype(h.device.type))
        h = h.to(W.dtype)
    return _LinearCrossEntropy.apply(h.flatten(0, 1), W, y.flatten(), PAD_ID, chunk)


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """fairseq's label_smoothed_cross_entropy summed over non-pad target tokens: (1 - eps - eps/(V-1)) * nll +
    eps/(V-1) * smooth, with smooth = -sum of all log-probabilities (OFA's criterion without constraints)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)  # [B, T, V] from logits [B, T, V], target [B, T]
    keep = target.ne(PAD_ID)
    nll = -lprobs.gather(-1, target[..., None])[..., 0][keep]
    smooth = -lprobs.sum(-1)[keep]
    eps_i = epsilon / (lprobs.size(-1) - 1)
    return ((1.0 - epsilon - eps_i) * nll + eps_i * smooth).sum()
