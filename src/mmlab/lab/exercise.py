"""Checking a learner's code against the library: ``mmlab exercise check-block FILE``.

The learner's file defines ``MyBlock(cfg)`` with ``forward(x, rope) -> x`` and the same submodule
names as ``mmlab.model.block.Block``. We load the library block's weights into it and compare, one
check at a time, so the first failure says what to look at: the parameter names, each sub-module on
its own (norm, attention, FFN), the whole block's output, its gradients, and causality.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmlab.config import ModelConfig, get_preset
from mmlab.errors import MMLabError
from mmlab.model.block import Block
from mmlab.model.rope import precompute_rope


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def load_module(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MMLabError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"mmlab_exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the learner's file: report, don't crash
        raise MMLabError(f"{path}: importing it failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, "MyBlock"):
        raise MMLabError(f"{path}: defines no class MyBlock")
    return module


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> tuple[bool, str]:
    if a.shape != b.shape:
        return False, f"shape {tuple(a.shape)}, expected {tuple(b.shape)}"
    diff = (a - b).abs().max().item()
    return diff <= atol + 1e-4 * b.abs().max().item(), f"max abs difference {diff:.2e}"


def _run(check: str, fn) -> Check:
    try:
        ok, detail = fn()
        return Check(check, ok, detail)
    except NotImplementedError as e:
        return Check(check, False, f"not implemented yet: {e}")
    except Exception as e:  # any error in the learner's code is a failed check, with its message
        return Check(check, False, f"{type(e).__name__}: {e}")


def check_block(block_cls: type, cfg: ModelConfig | None = None, seed: int = 0) -> list[Check]:
    """Compare ``block_cls(cfg)`` with the library's Block on random inputs. Returns every check."""
    cfg = cfg or get_preset("nano", n_heads=4, n_kv_heads=2)
    torch.manual_seed(seed)
    ref = Block(cfg, 0)
    with torch.no_grad():  # non-trivial norm gains, so a norm that ignores its weight is caught
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    try:
        mine = block_cls(cfg)
    except Exception as e:  # the learner's constructor
        return [Check("construct MyBlock(cfg)", False, f"{type(e).__name__}: {e}")]
    ref_names = dict(ref.state_dict())
    mine_names = set(mine.state_dict())
    missing, unexpected = sorted(set(ref_names) - mine_names), sorted(mine_names - set(ref_names))
    names_ok = not missing and not unexpected
    checks = [Check("parameter names match mmlab's Block", names_ok,
                    "" if names_ok else f"missing {missing[:4]}, unexpected {unexpected[:4]}")]
    if not names_ok:
        return checks
    mine.load_state_dict(ref.state_dict())
    T = 12
    x = torch.randn(2, T, cfg.hidden_size)
    cos, sin = precompute_rope(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    rope = (cos[:T], sin[:T])

    checks.append(_run("RMSNorm (attn_norm)", lambda: _close(mine.attn_norm(x), ref.attn_norm(x))))
    checks.append(_run("attention (causal, GQA, RoPE)", lambda: _close(mine.attn(x, rope), ref.attn(x, rope)[0])))
    checks.append(_run("SwiGLU FFN", lambda: _close(mine.ffn(x), ref.ffn(x))))
    checks.append(_run("the whole block's output", lambda: _close(mine(x, rope), ref(x, rope)[0])))

    def grads():
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn(2, T, cfg.hidden_size)
        (mine(xa, rope) * g).sum().backward()
        (ref(xb, rope)[0] * g).sum().backward()
        ok, detail = _close(xa.grad, xb.grad, atol=1e-4)
        mine_grads = dict(mine.named_parameters())
        for name, p in ref.named_parameters():
            p_ok, p_detail = _close(mine_grads[name].grad, p.grad, atol=1e-4)
            if not p_ok:
                return False, f"gradient of {name}: {p_detail}"
        return ok, "input and parameter gradients: " + detail

    checks.append(_run("gradients", grads))

    def causal():
        changed = x.clone()
        changed[:, T // 2:] = torch.randn_like(changed[:, T // 2:])
        return _close(mine(changed, rope)[:, : T // 2], mine(x, rope)[:, : T // 2])

    checks.append(_run("causal: changing later tokens leaves earlier outputs alone", causal))
    return checks


def check_block_file(path: str | Path) -> list[Check]:
    return check_block(load_module(path).MyBlock)


def format_checks(checks: list[Check]) -> str:
    lines = [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail else "") for c in checks]
    passed = sum(c.ok for c in checks)
    verdict = "your block matches mmlab's" if passed == len(checks) else f"{passed}/{len(checks)} checks pass"
    return "\n".join([*lines, verdict])


if __name__ == "__main__":
    print(format_checks(check_block_file(sys.argv[1])))
