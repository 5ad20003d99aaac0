"""Autoregressive generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty.

Generation is two phases:
  * prefill: run the whole prompt once, filling the KV cache;
  * decode: feed one new token per step; attention reads the cached keys/values.
Once the sequence would exceed the model's ``max_seq_len``, we slide a window of the last
``max_seq_len`` tokens and recompute without a cache (what nanoGPT does at every step).

    >>> for token in stream_generate(model, prompt_ids, max_new_tokens=50, temperature=0.8, seed=0):
    ...     print(tokenizer.decode([token]), end="")
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

import torch

from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM

GREEDY_BELOW = 1e-5  # temperatures below this are treated as 0 (greedy)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax). top_k / top_p of None mean "no filter"."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def validate(self) -> None:
        def finite(name: str) -> float:
            value = getattr(self, name)
            try:  # a huge int has no float: OverflowError
                ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
            except OverflowError:
                ok = False
            if not ok:
                shown = "(a huge integer)" if isinstance(value, int) and abs(value) >= 10**30 else repr(value)
                raise MMLabError(f"{name}={shown} must be a finite number")
            return value

        if finite("temperature") < 0:
            raise MMLabError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise MMLabError(f"top_k={self.top_k!r} must be an integer >= 1")
        if self.top_p is not None and not 0 < finite("top_p") <= 1:
            raise MMLabError(f"top_p={self.top_p} must be in (0, 1]")
        if finite("repetition_penalty") <= 0:
            raise MMLabError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style (Keskar et al. 2019): make every token already in ``seen`` (B, T) less likely —
    divide its logit by ``penalty`` when positive, multiply when negative. logits: (B, V)."""
    if penalty == 1.0:
        return logits
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by index), set the rest to -inf."""
    k = min(k, logits.size(-1))
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of top tokens whose probabilities sum to >= p (at least one)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above this one
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution the sampler draws from (temperature, then top-k, then top-p), as probabilities.
    logits: (T, V) or (V,) -> (T, V). Temperature 0 gives the one-hot of the argmax. The repetition penalty
    is not applied here: it depends on the tokens already seen (``sample_next`` applies it first)."""
    logits = logits.float().reshape(-1, logits.size(-1))
    if params.temperature < GREEDY_BELOW:  # dividing by ~0 overflows: this limit *is* greedy
        return torch.zeros_like(logits).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = logits / params.temperature
    if params.top_k is not None:
        logits = filter_top_k(logits, params.top_k)
    if params.top_p is not None and params.top_p < 1.0:
        logits = filter_top_p(logits, params.top_p)
    return torch.softmax(logits, dim=-1)


def sample_next(
    logits: torch.Tensor, seen: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick the next token of each row. logits: (B, V) for the last position; seen: (B, T). -> (B,)"""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    return torch.multinomial(sampling_probs(logits, params), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_steps(
    model: MiniMindLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    static_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), one step at a time. idx: (B, T) prompt ids.

    This is the one decoding loop; ``generate`` and ``stream_generate`` are thin wrappers. A model
    without the causal mask recomputes every step (its earlier positions change as tokens arrive, so
    cached keys/values would be stale).
    """
    params = params or SamplingParams()
    params.validate()
    if idx.dim() != 2 or idx.size(1) == 0:
        raise MMLabError(f"prompt must be a non-empty (batch, length) tensor of ids, got shape {tuple(idx.shape)}")
    vocab = model.cfg.vocab_size
    if int(idx.min()) < 0 or int(idx.max()) >= vocab:
        raise MMLabError(f"prompt holds token ids outside the vocabulary [0, {vocab})")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    idx = idx.to(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    max_len = model.cfg.max_seq_len
    cache = model.new_cache(static=static_cache) if use_cache and model.cfg.causal else None
    fed = 0  # how many tokens of idx the cache already holds
    try:
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) > max_len:
                cache = None  # past the position table: slide a window, recompute every step
            if cache is not None:
                logits = model(idx[:, fed:], cache=cache).logits[:, -1]
                fed = idx.size(1)
            else:
                logits = model(idx[:, -max_len:]).logits[:, -1]
            token = sample_next(logits, idx, params, generator)
            idx = torch.cat([idx, token[:, None]], dim=1)
            yield token
    finally:
        model.train(was_training)


def _stop_set(stop_tokens: Sequence[int]) -> set[int]:
    try:
        stops = {int(t) for t in stop_tokens}
    except (TypeError, ValueError):
        raise MMLabError(f"stop_tokens={stop_tokens!r} must be a list of token ids") from None
    return stops


def _as_batch(prompt: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor) -> torch.Tensor:
    if isinstance(prompt, torch.Tensor):
        return prompt[None] if prompt.dim() == 1 else prompt
    if len(prompt) > 0 and isinstance(prompt[0], (list, tuple)):
        lengths = {len(p) for p in prompt}
        if len(lengths) != 1:
            raise MMLabError(f"batched prompts must have equal lengths, got lengths {sorted(lengths)}")
        return torch.tensor(prompt, dtype=torch.long)
    return torch.tensor([list(prompt)], dtype=torch.long)


def generate(
    model: MiniMindLM,
    prompt: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    static_cache: bool = True,
) -> list[list[int]]:
    """Generate continuations of one prompt (a list of ids) or a batch of equal-length prompts.

    Returns the new tokens of each row, cut before the first stop token (which is not included).
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    batch = _as_batch(prompt)
    stops = _stop_set(stop_tokens)
    out: list[list[int]] = [[] for _ in range(batch.size(0))]
    done = [False] * batch.size(0)
    with closing(generate_steps(model, batch, max_new_tokens, params, seed, use_cache, static_cache)) as steps:
        for step in steps:
            for row, token in enumerate(step.tolist()):
                if done[row]:
                    continue
                if token in stops:
                    done[row] = True
                else:
                    out[row].append(token)
            if all(done):
                break
    return out


def stream_generate(
    model: MiniMindLM,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    static_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids of a single prompt as they are produced; stop before a stop token."""
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    batch = _as_batch(prompt)
    if batch.size(0) != 1:
        raise MMLabError("stream_generate takes a single prompt; use generate for batches")
    stops = _stop_set(stop_tokens)
    with closing(generate_steps(model, batch, max_new_tokens, params, seed, use_cache, static_cache)) as steps:
        for step in steps:
            token = int(step[0])
            if token in stops:
                return
            yield token
