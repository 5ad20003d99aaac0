"""Speculative decoding: greedy output equals the target's; sampled output follows the target's distribution."""

import math

import pytest
import torch

from mmlab.config import ModelConfig
from mmlab.errors import ConfigError, MMLabError
from mmlab.infer.generate import SamplingParams, generate
from mmlab.infer.speculative import sampling_probs, speculative_generate
from mmlab.model import MiniMindLM


def tiny(seed: int, vocab: int = 8, layers: int = 1, width: int = 16, std: float = 0.3) -> MiniMindLM:
    """A random model whose next-token distributions are far from uniform (init_std 0.3, not 0.02),
    so two seeds give visibly different distributions and the draft gets rejected often."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=width, n_layers=layers, n_heads=2, max_seq_len=48,
                      rope_theta=1e4, init_std=std)
    return MiniMindLM(cfg).eval()


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_the_targets_greedy_output(k):
    target = tiny(0, vocab=32, layers=2, width=32)
    unrelated = tiny(1, vocab=32, width=16)
    for prompt in ([5], [3, 14, 15, 9, 26], list(range(12))):
        ref = generate(target, prompt, 24, temperature=0)[0]
        same = speculative_generate(target, target, prompt, 24, k=k, temperature=0)
        other = speculative_generate(target, unrelated, prompt, 24, k=k, temperature=0, seed=1)
        assert same.tokens == ref and other.tokens == ref
        assert same.acceptance_rate == 1.0 and same.accepted == same.proposed > 0
        # k + 1 tokens per target pass when everything is accepted (+1 pass for the prefill)
        assert same.target_forwards <= 1 + math.ceil(24 / (k + 1))
        if k > 1:
            assert other.acceptance_rate < 1.0
        # top_k=1 sampling is greedy too (exercises the filtered path)
        assert speculative_generate(target, unrelated, prompt, 24, k=k, top_k=1, seed=2).tokens == ref


def _chi2_quantile(df: int, z: float) -> float:
    """Wilson-Hilferty: the chi-square quantile whose standard-normal score is z (good to ~1% for df > 20)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampled_tokens_follow_the_targets_distribution():
    """The first two tokens of speculative sampling, over 3000 seeds, against the target's exact
    distribution over the 64 two-token sequences: P(a, b) = p(a | prompt) * p(b | prompt, a).

    k=2 and 3 new tokens, so the first round proposes two draft tokens: the samples go through
    acceptance of both (then a bonus token), rejection at the first or the second draft token (a
    residual draw), and the k=0 last round. The draft is a different random model (total variation
    ~0.3 from the target per step), so roughly half of the proposals are rejected.

    Tolerance: Pearson's chi-square over the cells, merging those with expected count < 5 into one,
    below its 0.999 quantile (z = 3.09). With fixed seeds the test is deterministic; a correct
    sampler passes such a draw with probability 0.999. Power: had we returned the *draft's* two-token
    distribution, the expected statistic would be many times the threshold (asserted below)."""
    target, draft = tiny(10), tiny(11)
    prompt, params, n = [1, 2, 3], SamplingParams(temperature=0.8), 3000
    with torch.no_grad():
        first_p = sampling_probs(target(torch.tensor([prompt])).logits[0, -1], params)[0]
        first_q = sampling_probs(draft(torch.tensor([prompt])).logits[0, -1], params)[0]
        two = torch.tensor([prompt + [a] for a in range(8)])
        second_p = sampling_probs(target(two).logits[:, -1], params)
        second_q = sampling_probs(draft(two).logits[:, -1], params)
    exact = (first_p[:, None] * second_p).flatten().double()  # index 8 * a + b
    draft_exact = (first_q[:, None] * second_q).flatten().double()
    counts = torch.zeros(64, dtype=torch.float64)
    proposed = accepted = 0
    for seed in range(n):
        out = speculative_generate(target, draft, prompt, 3, k=2, temperature=0.8, seed=seed)
        counts[8 * out.tokens[0] + out.tokens[1]] += 1
        proposed, accepted = proposed + out.proposed, accepted + out.accepted
    assert 0.2 < accepted / proposed < 0.9  # both branches (accept / residual) were exercised often
    expected = n * exact
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    stat = float(((obs - exp) ** 2 / exp).sum())
    threshold = _chi2_quantile(len(obs) - 1, 3.09)
    assert stat < threshold, (stat, threshold)
    draft_stat = float(n * ((draft_exact[big] - exact[big]) ** 2 / exact[big]).sum())
    assert draft_stat > 5 * threshold
    assert 0.5 * float((counts / n - exact).abs().sum()) < 0.05  # and total variation is small


def test_stop_tokens_and_max_new_tokens():
    target, draft = tiny(3, vocab=32, width=32), tiny(4, vocab=32)
    for k in (1, 4):
        for seed in range(5):
            free = speculative_generate(target, draft, [1, 2], 20, k=k, seed=seed)
            assert len(free.tokens) == 20
            assert speculative_generate(target, draft, [1, 2], 20, k=k, seed=seed).tokens == free.tokens
            stop = free.tokens[7]
            cut = speculative_generate(target, draft, [1, 2], 20, k=k, seed=seed, stop_tokens=[stop])
            assert cut.tokens == free.tokens[:free.tokens.index(stop)]
    assert speculative_generate(target, draft, [1], 0).tokens == []
    assert len(speculative_generate(target, draft, [1], 1, k=8).tokens) == 1


@pytest.mark.parametrize("bad, match", [
    ({"k": 0}, "k=0"), ({"k": 2.5}, "k=2.5"), ({"max_new_tokens": 100}, "max_seq_len"),
    ({"temperature": -1.0}, "temperature"), ({"prompt": []}, "prompt"), ({"prompt": [99]}, "vocabulary"),
])
def test_bad_arguments_are_config_errors(bad, match):
    target, draft = tiny(0), tiny(1)
    kwargs = {"prompt": [1, 2], "max_new_tokens": 5, **bad}
    with pytest.raises(Exception, match=match) as err:
        speculative_generate(target, draft, kwargs.pop("prompt"), kwargs.pop("max_new_tokens"), **kwargs)
    # SamplingParams (temperature) raises MMLabError; everything speculative_generate checks itself, ConfigError
    assert isinstance(err.value, MMLabError if "temperature" in bad else ConfigError), type(err.value)
    assert "\n" not in str(err.value)


def test_different_vocabularies_are_refused():
    with pytest.raises(ConfigError, match="vocab_size=16 differs") as err:
        speculative_generate(tiny(0), tiny(1, vocab=16), [1, 2], 5)
    assert "\n" not in str(err.value)


def test_cli_sample_with_a_draft_gives_the_plain_greedy_text(tmp_path, capsys):
    """`mmlab sample --draft`: at temperature 0 the text is the model's own greedy text, the stats go to
    stderr, and a draft with another tokenizer is a one-line error."""
    from mmlab.cli import main
    from mmlab.config import get_preset
    from mmlab.tokenizer.char import CharTokenizer
    from mmlab.train.checkpoint import save_checkpoint

    tok = CharTokenizer.from_corpus("the quick brown fox jumps over the lazy dog.")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "target", MiniMindLM(get_preset("nano", vocab_size=tok.vocab_size)), tok)
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "draft", MiniMindLM(get_preset("nano", vocab_size=tok.vocab_size, n_layers=1)), tok)
    common = ["sample", "--ckpt", str(tmp_path / "target"), "--prompt", "the ", "--max-new-tokens", "12",
              "--temperature", "0"]
    assert main(common) == 0
    plain = capsys.readouterr().out
    assert main([*common, "--draft", str(tmp_path / "draft"), "--speculate", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == plain and "draft tokens accepted" in out.err
    other = CharTokenizer.from_corpus("0123456789 +-=")
    save_checkpoint(tmp_path / "alien", MiniMindLM(get_preset("nano", vocab_size=other.vocab_size)), other)
    assert main([*common, "--draft", str(tmp_path / "alien")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer differs" in err[0]
