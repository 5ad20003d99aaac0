"""Muon for the hidden matrices, AdamW for everything else — written out, step by step.

Muon (Keller Jordan, 2024) keeps SGD's momentum but replaces each matrix's update by the nearest
*orthogonal* matrix: all singular values of the update are pushed towards 1, so no direction of the
matrix gets a step hundreds of times larger than another (what a raw gradient, dominated by a few
singular directions, would give). The orthogonalisation is five Newton-Schulz iterations of an odd
quintic polynomial, matmuls only — cheap enough to run every step, and stable in bfloat16.

Muon is defined for matrices that map hidden states to hidden states. Embeddings, the output layer
and the 1-D norm gains keep AdamW. Following Moonlight (Liu et al., 2025), each Muon update is scaled
by ``0.2 * sqrt(max(rows, cols))`` so its RMS matches a typical AdamW update: one learning rate and one
schedule then serve both kinds of parameter.

A test checks this class against PyTorch's ``torch.optim.Muon`` (matrices) and ``torch.optim.AdamW``
(the rest) on the same model: same parameters after several steps.
"""

from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U @ V^T for g = U S V^T: the quintic Newton-Schulz iteration X <- aX + b(XX^T)X +
    c(XX^T)^2 X, which drives every singular value of X (after scaling so the largest is <= 1) towards
    1. The coefficients maximise the slope at 0, so small singular values grow fast; the result has
    singular values roughly in [0.5, 1.5], which is all the optimizer needs."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix x @ x.T is then the small one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm, so every singular value <= 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram @ gram, one fused op
        x = torch.addmm(x, poly, x, beta=a)  # a * x + poly @ x
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules: groups with ``use_muon=True`` (2-D hidden matrices) get Muon,
    the others AdamW. ``lr`` and ``weight_decay`` are per group, as in any PyTorch optimizer, so the
    trainer's schedule sets both kinds of group at once."""

    def __init__(self, groups: list[dict], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 momentum: float = 0.95, weight_decay: float = 0.1, eps: float = 1e-8, ns_steps: int = 5):
        for g in groups:
            if g.get("use_muon") and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon updates 2-D matrices only; put other parameters in an AdamW group")
        defaults = {"lr": lr, "betas": betas, "momentum": momentum, "weight_decay": weight_decay, "eps": eps,
                    "ns_steps": ns_steps, "use_muon": False}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                p.mul_(1 - lr * wd)  # decoupled weight decay, as in AdamW
                if group["use_muon"]:
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = p.grad.lerp(buf, group["momentum"])  # Nesterov: look one step ahead
                    update = orthogonalize(update, group["ns_steps"], 1e-7)
                    p.add_(update.to(p.dtype), alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
                else:
                    beta1, beta2 = group["betas"]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    state["step"] += 1
                    m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                    m.lerp_(p.grad, 1 - beta1)
                    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])  # bias-corrected
                    p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
        return loss
