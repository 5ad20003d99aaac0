"""`mmlab eval`: log-likelihood scoring equals a direct computation, chance and standard errors are right, a model
that knows the answers scores 1.0, bits per byte follow their formula, and the CLI reports (or refuses) in one go."""

import json
import math

import pytest
import torch

from mmlab.cli import main
from mmlab.config import get_preset
from mmlab.data.corpus import load_corpus
from mmlab.data.synthetic import story_corpus
from mmlab.eval.choice import ChoiceItem, evaluate_choices, load_choice_items
from mmlab.eval.exact import ModelAnswerer, evaluate_exact, gsm8k_items, synthetic_items
from mmlab.eval.loglik import LogLikelihood
from mmlab.eval.perplexity import perplexity
from mmlab.eval.stats import accuracy_vs_chance, binomial_stderr, wilson_interval
from mmlab.model import MiniMindLM
from mmlab.tokenizer import ENDOFTEXT, CharTokenizer, encode_chat, train_bpe
from mmlab.train.checkpoint import save_checkpoint

ARC = "mc_arc_easy_test_nutcracker.jsonl"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(story_corpus(20_000), vocab_size=300)


@pytest.fixture(scope="module")
def model(bpe):
    return MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size, max_seq_len=128)).eval()


@pytest.fixture
def data_env(monkeypatch, tmp_path, mirror_file):
    """Registry datasets come from the mirror; nothing is cached outside tmp_path."""
    monkeypatch.setenv("MMLAB_DATA_MIRROR", str(mirror_file(ARC).parent))
    monkeypatch.setenv("MMLAB_DATA_DIR", str(tmp_path / "cache"))
    return mirror_file


def direct_loglik(model, ids, n_cont):
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].float(), dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - n_cont, len(ids)))


def test_loglikelihood_is_the_sum_over_the_continuation_tokens(model, bpe):
    score = LogLikelihood(model, bpe)
    context, choices = "Question: Where did Tom find the ball?\nAnswer:", [" in the park", " at the big blue lake"]
    eot = [bpe.token_to_id(ENDOFTEXT)]
    for choice, got in zip(choices, score(context, choices)):  # one padded batch, rows of different lengths
        cont = bpe.encode(choice)
        assert got == pytest.approx(direct_loglik(model, eot + bpe.encode(context) + cont, len(cont)), abs=1e-4)
    # a context longer than the model's window loses its oldest tokens, never the continuation's
    long = "Lily had a red kite. " * 30
    cont = bpe.encode(" yes")
    ids = (eot + bpe.encode(long) + cont)[-(model.cfg.max_seq_len + 1):]
    assert score(long, [" yes"])[0] == pytest.approx(direct_loglik(model, ids, len(cont)), abs=1e-4)


def test_chance_stderr_and_ties():
    items = [ChoiceItem("q", (" a", " b", " c"), (0,)), ChoiceItem("q", (" a", " b", " c", " d"), (1,)),
             ChoiceItem("q", (" a", " b", " c", " d", " e"), (2,)), ChoiceItem("q", (" a", " b", " c", " d"), (0, 3))]
    flat = evaluate_choices(items, lambda ctx, conts: [0.0] * len(conts))  # cannot tell the choices apart
    chance = (1 / 3 + 1 / 4 + 1 / 5 + 2 / 4) / 4
    assert flat["chance"] == pytest.approx(chance)
    for m in flat["metrics"].values():  # ties earn 1 / (choices tied): exactly chance, not "always A"
        assert m["accuracy"] == pytest.approx(chance) and m["verdict"] == "not distinguishable from chance"
    assert binomial_stderr(0.3, 100) == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
    r = accuracy_vs_chance([1.0] * 40 + [0.0] * 60, [0.25] * 100)
    assert r["stderr"] == pytest.approx(math.sqrt(0.4 * 0.6 / 100))
    assert r["z_vs_chance"] == pytest.approx((0.4 - 0.25) / math.sqrt(0.25 * 0.75 / 100))
    assert r["verdict"] == "above chance"
    assert accuracy_vs_chance([1.0] * 28 + [0.0] * 72, [0.25] * 100)["verdict"] == "not distinguishable from chance"
    assert accuracy_vs_chance([0.0] * 100, [0.25] * 100)["verdict"] == "below chance"


def test_intervals_are_wilson_never_zero_width_at_the_edges():
    # 0 right out of 50: Wald's p ± 1.96 stderr is [0, 0]; Wilson's upper end is z² / (n + z²)
    assert binomial_stderr(0.0, 50) == 0.0
    lo, hi = wilson_interval(0.0, 50)
    assert lo == 0.0 and hi == pytest.approx(1.96**2 / (50 + 1.96**2))
    lo, hi = wilson_interval(1.0, 50)
    assert hi == 1.0 and lo == pytest.approx(50 / (50 + 1.96**2))
    # 40 out of 100 (a textbook value), and the interval is asymmetric around p away from 0.5
    assert wilson_interval(0.4, 100) == pytest.approx((0.3094, 0.4980), abs=1e-4)
    lo, hi = wilson_interval(0.1, 60)
    assert 0 < lo < 0.1 < hi < 1 and hi - 0.1 > 0.1 - lo
    assert all(math.isnan(x) for x in wilson_interval(0.5, 0))
    for n in (1, 6, 11, 21, 50):  # it always holds the measured accuracy (exactly, even at 0 and 1)
        assert all(wilson_interval(k / n, n)[0] <= k / n <= wilson_interval(k / n, n)[1] for k in range(n + 1))
    # every accuracy and every breakdown cell carries it; the terminal report prints it
    r = accuracy_vs_chance([0.0] * 50, [0.0] * 50)
    assert r["stderr"] == 0.0 and r["ci95"] == pytest.approx([0.0, 1.96**2 / (50 + 1.96**2)])
    items = synthetic_items(12)
    result = evaluate_exact(items, lambda q: "no idea")
    assert all(g["ci95"][1] > 0 for g in result["breakdown"]["by_kind"].values())
    from mmlab.eval.tasks import format_report

    text = format_report({"task": "synthetic-tasks", "about": "", **result})
    assert "0.000 (95% CI 0.000-0.243)" in text


def test_a_scorer_that_knows_the_answers_scores_one(data_env):
    items = load_choice_items(data_env(ARC), "question", limit=25)
    gold = {it.context: {it.choices[g] for g in it.gold} for it in items}
    result = evaluate_choices(items, lambda ctx, conts: [0.0 if c in gold[ctx] else -10.0 for c in conts])
    assert result["n"] == 25 and not result["failures"]
    for m in result["metrics"].values():
        assert m["accuracy"] == 1.0 and m["verdict"] == "above chance"
    counts = [len(it.choices) for it in items]
    assert result["chance"] == pytest.approx(sum(1 / c for c in counts) / len(counts))
    assert sum(g["n"] for g in result["breakdown"]["acc_by_n_choices"].values()) == 25
    # the opposite scorer is wrong everywhere, and the failures say what it picked
    wrong = evaluate_choices(items, lambda ctx, conts: [-10.0 if c in gold[ctx] else 0.0 for c in conts])
    assert wrong["metrics"]["acc"]["accuracy"] == 0.0 and wrong["metrics"]["acc"]["verdict"] == "below chance"
    assert wrong["failures"][0]["picked"] not in wrong["failures"][0]["gold"]


def test_exact_match_by_kind_and_failures(data_env):
    items = synthetic_items(36)
    answers = {it.question: it.answer for it in items}
    perfect = evaluate_exact(items, lambda q: f" {answers[q]}\n")
    assert perfect["metrics"]["exact_match"]["accuracy"] == 1.0
    assert perfect["chance"] == pytest.approx(shuffled_chance_by_hand(items, [it.answer for it in items]))
    assert set(perfect["breakdown"]["by_kind"]) == {"add", "sub", "mul", "copy", "reverse", "fact"}
    no_mul = evaluate_exact(items, lambda q: "no idea" if "*" in q else answers[q])
    assert no_mul["breakdown"]["by_kind"]["mul"]["accuracy"] == 0.0
    assert no_mul["breakdown"]["by_kind"]["add"]["accuracy"] == 1.0
    assert no_mul["metrics"]["exact_match"]["accuracy"] == pytest.approx(30 / 36)
    assert all("*" in f["question"] for f in no_mul["failures"]) and len(no_mul["failures"]) == 5
    # GSM8K: the committed number counts, whatever the working; no number at all is a format failure
    math_items = gsm8k_items(data_env("gsm8k_test.jsonl"), limit=6)
    solved = evaluate_exact(math_items, lambda q: next(f"So... #### {it.answer}" for it in math_items
                                                       if it.question == q))
    assert solved["metrics"]["exact_match"]["accuracy"] == 1.0 and "by_solution_steps" in solved["breakdown"]
    silent = evaluate_exact(math_items, lambda q: "I do not know.")
    assert silent["metrics"]["exact_match"]["accuracy"] == 0.0 and silent["no_answer"] == 1.0


def test_the_model_is_prompted_through_the_chat_template_when_it_can(model, bpe):
    answerer = ModelAnswerer(model, bpe, max_new_tokens=4, single_line=True)
    q = "What is 2 + 3?"
    assert answerer.prompt_ids(q) == encode_chat(bpe, [{"role": "user", "content": q}], add_generation_prompt=True)[0]
    result = evaluate_exact(synthetic_items(6), answerer)
    assert result["n"] == 6 and 0.0 <= result["metrics"]["exact_match"]["accuracy"] <= 1.0
    char = CharTokenizer.from_corpus("What is 0123456789+-*? Question: Answer\n")
    plain = ModelAnswerer(MiniMindLM(get_preset("nano", vocab_size=char.vocab_size)), char, 4, single_line=True)
    assert plain.prompt_format.startswith("Question:") and plain.prompt_ids(q) == char.encode(f"Question: {q}\nAnswer:")
    # items the tokenizer cannot encode ("Copy the letters: ..." has letters this vocabulary lacks) are counted out
    result = evaluate_exact(synthetic_items(6), plain)
    skipped = result["skipped"]["TokenizerError"]
    assert result["n"] + skipped["count"] == 6 and result["n"] >= 3 and "not in the vocabulary" in skipped["first"]


def test_bits_per_byte_is_nats_over_ln2_over_bytes(data_env, bpe, model):
    # a model with all-zero weights predicts the uniform distribution: exactly ln(V) nats per token
    path = data_env("the-verdict.txt")
    text = path.read_text(encoding="utf-8")
    char = CharTokenizer.from_corpus(text)
    uniform = MiniMindLM(get_preset("nano", vocab_size=char.vocab_size))
    with torch.no_grad():
        for p in uniform.parameters():
            p.zero_()
    r = perplexity(uniform, char, str(path), limit=500)["metrics"]
    predicted = text[1:501]  # a char tokenizer without <|endoftext|>: the first character is context only
    assert r["tokens"] == 500 and r["bytes"] == len(predicted.encode("utf-8"))
    assert r["loss"] == pytest.approx(math.log(char.vocab_size), rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(500 * math.log(char.vocab_size) / math.log(2) / r["bytes"], rel=1e-5)
    assert r["perplexity"] == pytest.approx(char.vocab_size, rel=1e-4)
    # a BPE with <|endoftext|> in front: every document is scored, so the bytes are the corpus' bytes
    stories = data_env("tinystories_sample_cs336.txt")
    r = perplexity(model, bpe, str(stories))
    docs = load_corpus(str(stories)).documents
    assert r["metrics"]["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    assert r["metrics"]["bits_per_byte"] == pytest.approx(r["metrics"]["nats"] / math.log(2) / r["metrics"]["bytes"])
    val = perplexity(model, bpe, str(stories), split="val")
    assert val["n"] == int(0.1 * (r["n"])) - 1  # the last 10% of the stream (the extra leading token is not in it)


def test_cli_happy_path_and_a_bad_task(data_env, tmp_path, bpe, model, capsys):
    save_checkpoint(tmp_path / "ckpt", model, bpe)
    out = tmp_path / "res" / "hellaswag.json"
    assert main(["eval", "--ckpt", str(tmp_path / "ckpt"), "--task", "hellaswag-100", "--limit", "6",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chance 0.250" in printed and "acc_norm" in printed
    result = json.loads(out.read_text())
    assert result["task"] == "hellaswag-100" and result["n"] == 6 and result["chance"] == 0.25
    assert {"accuracy", "stderr", "chance", "verdict"} <= set(result["metrics"]["acc"])
    assert result["breakdown"]["acc_by_gold_position"] and "failures" in result
    assert main(["eval", "--ckpt", str(tmp_path / "ckpt"), "--task", "perplexity", "--data", "the-verdict",
                 "--limit", "200"]) == 0
    assert "bits per byte" in capsys.readouterr().out
    assert main(["eval", "--ckpt", str(tmp_path / "ckpt"), "--task", "mmlu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown eval task 'mmlu'" in err and "arc-easy-test" in err


def test_perplexity_reads_the_pretraining_corpus_only(data_env, tmp_path, bpe, model, capsys):
    """A pretrained checkpoint is scored on its own corpus by default; an SFT checkpoint records conversations,
    not text, so it asks for --data instead of reading its JSONL as a corpus."""
    state = {"step": 1, "train_config": {"val_fraction": 0.1, "seed": 0}, "extra": {"data": "the-verdict"}}
    save_checkpoint(tmp_path / "pre", model, bpe, state)
    assert main(["eval", "--ckpt", str(tmp_path / "pre"), "--task", "perplexity", "--limit", "100"]) == 0
    assert "bits per byte" in capsys.readouterr().out
    sft_state = {"step": 1, "train_config": {"seed": 0}, "extra": {"stage": "sft", "data": "instructions-1k"}}
    save_checkpoint(tmp_path / "sft", model, bpe, sft_state)
    assert main(["eval", "--ckpt", str(tmp_path / "sft"), "--task", "perplexity"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --data" in err and "sft checkpoint" in err
    assert main(["eval", "--ckpt", str(tmp_path / "sft"), "--task", "perplexity", "--data", "the-verdict",
                 "--limit", "100"]) == 0


def shuffled_chance_by_hand(items, gots):
    """The mean over items of: the share of the other items of the same kind whose answer is this item's reference."""
    shares = []
    for i, it in enumerate(items):
        others = [g for j, (o, g) in enumerate(zip(items, gots, strict=True)) if j != i and o.kind == it.kind]
        shares.append(sum(g == it.answer for g in others) / len(others))
    return sum(shares) / len(shares)


def test_open_answer_chance_is_the_shuffled_answers_score(data_env):
    """Lucky hits of a constant answer are not 'above chance': a model that gives the commonest fact answer to
    every fact question scores what that answer scores on questions it never read."""
    from collections import Counter

    items = [it for it in synthetic_items(600) if it.kind == "fact"]
    common = Counter(it.answer for it in items).most_common(1)[0][0]
    constant = evaluate_exact(items, lambda q: common)
    hits = sum(it.answer == common for it in items)
    assert hits > 0 and constant["metrics"]["exact_match"]["accuracy"] == pytest.approx(hits / len(items))
    assert constant["chance"] == pytest.approx(shuffled_chance_by_hand(items, [common] * len(items)))
    assert constant["metrics"]["exact_match"]["verdict"] != "above chance"


def test_shortest_counts_ties_alike_for_the_answer_and_the_pick():
    from mmlab.eval.choice import ChoiceItem

    # the answer ties for shortest with the first choice; the scorer picks the first
    items = [ChoiceItem("Q:", (" ab", " cd", " efgh"), (1,), "x:1"), ChoiceItem("Q:", (" a", " bcd"), (1,), "x:2")]
    result = evaluate_choices(items, lambda ctx, conts: [-float(i) for i in range(len(conts))])
    assert result["bias"]["gold_is_shortest"] == 0.5  # item 1: a shortest choice; item 2: not
    assert result["bias"]["acc_picks_shortest"] == 1.0  # the pick is a shortest choice in both
