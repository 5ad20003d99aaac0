"""Fused elementwise work for the decoder: RMSNorm, RoPE on q and k together, and SwiGLU's SiLU(gate) * up,
each a ``torch.autograd.Function`` with a hand-written backward pass.

Why: at the sizes a laptop trains (hidden 128-768), a step is bound by per-op overhead and memory traffic,
not by FLOPs. Written as plain tensor code, RMSNorm is seven ops forward and autograd records each one, saves
its inputs and runs a backward op for it; RoPE is a chunk, a negation, a cat, two muls and an add for q, and
again for k. Here each is one node: the forward computes what the backward needs (RMSNorm's 1/rms, nothing
else), and the backward is the closed form, with fewer, larger kernels and fewer saved tensors.

The plain versions stay the reference (``norm.RMSNorm`` with ``fused=False``, ``rope.apply_rope``, ``F.silu(g) *
u``): ``tests/test_fused.py`` checks values and gradients against them in float32 and bfloat16, and runs
``torch.autograd.gradcheck`` on each Function in float64. ``ModelConfig.fused_ops`` switches the model between
the two (default on); ``benchmarks/pretrain_cpu.py`` measures the difference.

Derivations (x: one row of C values, g: the incoming gradient, w: the norm's weight):

* RMSNorm: r = (mean(x^2) + eps)^(-1/2), x^ = x r, y = w x^. Then dL/dw = sum over rows of g x^, and
  dL/dx = r (g w - x^ mean(g w x^)) -- the mean(x^2) term's gradient folded into one reduction.
* RoPE (rotate-half layout, halves a, b of each head): y = (a c - b s, b c + a s) = x c + P(x) s' with P the
  swap of the halves (a roll by D/2) and s' = (-s, s). P is its own inverse and transpose, so dL/dx = g c + P(g s').
* SwiGLU: h = silu(gate) * up, silu(z) = z sigma(z). dL/dup = g silu(gate); dL/dgate = g up sigma(gate)
  (1 + gate (1 - sigma(gate))). Only gate and up are saved (not silu(gate)): it is recomputed in the backward.
"""

from __future__ import annotations

import torch


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32 at least (bf16 / fp16 widened; float64 kept, so gradcheck sees float64 arithmetic)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = _wide(x)
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        # the plain module's order of rounding: normalise in float32, cast to x's dtype, then scale
        return (xf * rstd).to(x.dtype).mul_(weight) if weight.dtype == x.dtype else weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = _wide(x) * rstd
        g = _wide(grad)
        dweight = None
        if ctx.needs_input_grad[1]:
            dweight = (g * xhat).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            gw = g * _wide(weight)
            dot = (gw * xhat).mean(-1, keepdim=True)
            dx = gw.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype)  # xhat is ours (and dweight is done): in place
        return dx, dweight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, as one autograd node. x: (..., C)."""
    return _RMSNorm.apply(x, weight, eps)


class _RoPEQK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, c: torch.Tensor, s: torch.Tensor):
        ctx.save_for_backward(c, s)
        half = q.shape[-1] // 2
        # roll by half swaps the halves: (a, b) -> (b, a); times (-s, s) that is rotate_half(x) * sin
        return tuple(torch.addcmul(x * c, x.roll(half, -1), s).to(x.dtype) for x in (q, k))

    @staticmethod
    def backward(ctx, gq: torch.Tensor, gk: torch.Tensor):
        c, s = ctx.saved_tensors
        half = c.shape[-1] // 2
        # y = x c + P(x) s with P the roll by half, its own inverse: dx = g c + P(g s)
        return (*((g * c).add_((g * s).roll(half, -1)).to(g.dtype) if g is not None else None for g in (gq, gk)),
                None, None)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """RoPE on q (B, H, T, D) and k (B, Hkv, T, D) in one autograd node; cos, sin: the (T, D) tables in the
    rotate-half layout (both halves equal) that ``rope.apply_rope`` takes, or any shape that broadcasts.
    Computed in the tables' dtype (fp32) and returned in q's and k's, as ``apply_rope`` does."""
    half = q.shape[-1] // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return _RoPEQK.apply(q, k, cos, signed_sin)


class _SiLUMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        dup = grad * torch.nn.functional.silu(gate) if ctx.needs_input_grad[1] else None
        # silu'(z) = sigma(z) (1 + z (1 - sigma(z))), in aten's one-pass kernel
        dgate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return dgate, dup


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up, SwiGLU's gated hidden layer, as one autograd node."""
    return _SiLUMul.apply(gate, up)
