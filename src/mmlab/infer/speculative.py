"""Speculative decoding: a small draft model guesses k tokens, the big target model checks them in one pass.

Decoding one token at a time is memory-bound on a GPU: every step streams all the target's weights
from memory to compute a single row of logits. Scoring k+1 positions in one forward pass costs about
the same time as scoring one, so if a cheap draft guesses the next k tokens, the target can check
them all at once and keep the longest prefix it agrees with.

One round (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling"):
  1. the draft samples d_1..d_k autoregressively from its distributions q_1..q_k;
  2. the target runs once on [last token, d_1..d_k] and gives p_1..p_{k+1};
  3. for i = 1..k: accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection
     emit a token drawn from the residual norm(max(0, p_i - q_i)) and end the round;
  4. if all k were accepted, emit a bonus token drawn from p_{k+1}.
Every emitted token is distributed *exactly* as if the target had sampled it alone — the draft
changes only the speed, never the output distribution. Greedy decoding (temperature 0) is the case
where p and q are one-hot: a draft token is kept iff it is the target's argmax, and a rejection
emits the target's argmax, so the output equals the target's greedy output.

Both models keep a KV cache, and every forward pass feeds what its cache lacks (``seq[cache.seq_len:]``).
After a round the target's cache holds every token but the newest one (the correction or bonus token,
fed first next round). The draft's can lag by one more: after a fully accepted round it has not seen
its own last proposal either (it was sampled, never fed), so its next pass feeds two tokens. After a
rejection both caches are rewound to the accepted prefix — the keys/values computed for rejected
tokens are simply overwritten next round.

    >>> out = speculative_generate(target, draft, prompt_ids, 100, k=4, temperature=0.8, seed=0)
    >>> out.tokens, out.acceptance_rate
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmlab.errors import ConfigError
from mmlab.infer.generate import SamplingParams, _stop_set, sampling_probs
from mmlab.model.kv_cache import KVCache
from mmlab.model.lm import MiniMindLM


@dataclass
class SpeculativeResult:
    """The new tokens (cut before the first stop token) and what it took to produce them."""

    tokens: list[int]
    proposed: int = 0  # draft tokens offered to the target
    accepted: int = 0  # of those, kept
    target_forwards: int = 0  # forward passes of the target (prefill included)
    draft_forwards: int = 0  # forward passes of the draft (prefill included)
    rounds: int = 0  # draft-then-verify rounds

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "proposed": self.proposed, "accepted": self.accepted,
                "acceptance_rate": self.acceptance_rate, "target_forwards": self.target_forwards,
                "draft_forwards": self.draft_forwards, "rounds": self.rounds}


def _rewind(cache: KVCache, length: int) -> None:
    """Forget every position from ``length`` on (the keys/values of rejected draft tokens)."""
    if length >= cache.seq_len:
        return
    if not cache.static:  # a growing cache holds exactly seq_len positions: cut the tensors
        cache.keys = [None if k is None else k[:, :, :length] for k in cache.keys]
        cache.values = [None if v is None else v[:, :, :length] for v in cache.values]
    cache.seq_len = length  # a static cache overwrites positions >= seq_len on the next write


def _check(target: MiniMindLM, draft: MiniMindLM, prompt: list[int], max_new_tokens: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1 (draft tokens proposed per round)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise ConfigError(f"draft vocab_size={draft.cfg.vocab_size} differs from the target's "
                          f"{target.cfg.vocab_size}; the two models must share one tokenizer")
    if not (target.cfg.causal and draft.cfg.causal):
        raise ConfigError("speculative decoding needs causal models (it decodes with a KV cache)")
    if next(target.parameters()).device != next(draft.parameters()).device:
        raise ConfigError("the target and the draft must be on the same device")
    if not prompt:
        raise ConfigError("the prompt must hold at least one token id")
    if min(prompt) < 0 or max(prompt) >= target.cfg.vocab_size:
        raise ConfigError(f"prompt holds token ids outside the vocabulary [0, {target.cfg.vocab_size})")
    limit = min(target.cfg.max_seq_len, draft.cfg.max_seq_len)
    if len(prompt) + max_new_tokens > limit:
        raise ConfigError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                          f"max_seq_len={limit}; speculative decoding does not slide a window")


@torch.no_grad()
def speculative_generate(
    target: MiniMindLM,
    draft: MiniMindLM,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    k: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
) -> SpeculativeResult:
    """Continue one prompt (a list of ids or a 1-D tensor) with ``target``, using ``draft`` to propose
    ``k`` tokens per round. The tokens follow the target's own sampling distribution (temperature,
    top_k, top_p applied to both models); temperature 0 gives exactly the target's greedy output.
    Repetition penalty is not supported (it would make p and q depend on the tokens being judged)."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.size(0) == 1:
            prompt = prompt[0]
        if prompt.dim() != 1:
            raise ConfigError(f"speculative decoding takes one prompt, got a tensor of shape {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    prompt = [int(t) for t in prompt]
    params = SamplingParams(temperature, top_k, top_p)
    params.validate()
    _check(target, draft, prompt, max_new_tokens, k)
    stops = _stop_set(stop_tokens)
    device = next(target.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    modes = (target.training, draft.training)
    target.eval()
    draft.eval()
    t_cache, d_cache = target.new_cache(static=True), draft.new_cache(static=True)
    seq = list(prompt)
    result = SpeculativeResult(tokens=[])

    def run(model: MiniMindLM, cache: KVCache, ids: list[int]) -> torch.Tensor:
        """Feed ``ids`` after what ``cache`` holds; return the logits of each fed position, (T, V)."""
        return model(torch.tensor([ids], dtype=torch.long, device=device), cache=cache).logits[0]

    def uniform() -> float:
        return float(torch.rand((), generator=generator, device=device))

    try:
        # prefill all but the last prompt token: the caches hold everything except the newest token
        if len(seq) > 1:
            run(target, t_cache, seq[:-1])
            run(draft, d_cache, seq[:-1])
            result.target_forwards += 1
            result.draft_forwards += 1
        n_new = 0
        while n_new < max_new_tokens:
            n = len(seq)
            # no point proposing past max_new_tokens: the last emitted token is the correction or bonus
            k_round = min(k, max_new_tokens - n_new - 1)
            # 1. draft proposes k_round tokens; q[i] is the distribution d[i] was drawn from
            proposal: list[int] = []
            q: list[torch.Tensor] = []
            for _ in range(k_round):
                logits = run(draft, d_cache, (seq + proposal)[d_cache.seq_len:])[-1]
                result.draft_forwards += 1
                q.append(sampling_probs(logits, params)[0])
                proposal.append(int(torch.multinomial(q[-1], 1, generator=generator)))
            # 2. target scores [newest token, d_1..d_k] in one pass: p[i] is its distribution after d_1..d_i
            logits = run(target, t_cache, seq[t_cache.seq_len:] + proposal)
            result.target_forwards += 1
            p = sampling_probs(logits[-(k_round + 1):], params)
            # 3. accept/reject left to right
            accepted = 0
            for i, token in enumerate(proposal):
                if uniform() < min(1.0, float(p[i, token] / q[i][token])):
                    accepted += 1
                    continue
                residual = (p[i] - q[i]).clamp(min=0)
                # sum 0 only if p == q up to rounding, where rejection has probability ~0: draw from p
                extra = residual if float(residual.sum()) > 0 else p[i]
                break
            else:
                extra = p[k_round]  # all accepted: a bonus token from the target's next distribution
            token = int(torch.multinomial(extra / extra.sum(), 1, generator=generator))
            new = [*proposal[:accepted], token]
            result.proposed += k_round
            result.accepted += accepted
            result.rounds += 1
            # 4. the caches keep the accepted prefix; the emitted token is fed next round
            _rewind(t_cache, n + accepted)
            _rewind(d_cache, n + accepted)
            seq.extend(new)
            n_new += len(new)
            for t in new:
                if t in stops:
                    return result
                result.tokens.append(t)
        return result
    finally:
        target.train(modes[0])
        draft.train(modes[1])
