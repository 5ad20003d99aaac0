"""PPO with a critic: GAE against numbers worked out by hand, the clipped value loss, a tiny run that learns,
the stage (report, resume with the critic) and `mmlab train ppo`."""

import json

import pytest
import torch

from mmlab.train.checkpoint import load_model
from mmlab.train.ppo import gae, value_loss, whiten
from test_post_training import base_ckpt, tcfg  # noqa: F401  (base_ckpt: a module fixture, built once here)


# ---- GAE ---------------------------------------------------------------------------------------
def test_gae_matches_a_hand_computed_example():
    # 3 steps, reward only at the end, gamma = 0.9, lam = 0.8 (gamma * lam = 0.72); V after the last step = 0
    #   delta_2 = 1 + 0.9 * 0   - 0.7 = 0.3
    #   delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03
    #   delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    #   A_2 = 0.3
    #   A_1 = 0.03 + 0.72 * 0.3   = 0.246
    #   A_0 = 0.04 + 0.72 * 0.246 = 0.21712
    #   returns = A + V = 0.71712, 0.846, 1.0
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0]]))
    # lam = 0: the one-step TD errors themselves
    adv0, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv0, torch.tensor([[0.04, 0.03, 0.3]]))


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    torch.manual_seed(0)
    rewards, values, gamma = torch.randn(4, 7), torch.randn(4, 7), 0.95
    adv, ret = gae(rewards, values, torch.ones(4, 7), gamma=gamma, lam=1.0)
    discounted = torch.stack([sum(gamma ** (k - t) * rewards[:, k] for k in range(t, 7)) for t in range(7)], dim=1)
    torch.testing.assert_close(adv, discounted - values)
    torch.testing.assert_close(ret, discounted)  # lam = 1: the value targets are the Monte-Carlo returns


def test_gae_ignores_prompt_and_padding_steps():
    """A completion in the middle of a row (prompt before, padding after) gets the advantages it would get
    alone; whatever rewards and values sit on masked steps change nothing, and masked steps get 0."""
    torch.manual_seed(1)
    r, v = torch.randn(1, 3), torch.randn(1, 3)
    alone, alone_ret = gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.8)
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    rewards, values = torch.randn(1, 7) * 10, torch.randn(1, 7) * 10  # garbage on the masked steps
    rewards[:, 2:5], values[:, 2:5] = r, v
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv[:, 2:5], alone)
    torch.testing.assert_close(ret[:, 2:5], alone_ret)
    assert torch.equal(adv * (1 - mask), torch.zeros(1, 7)) and torch.equal(ret * (1 - mask), torch.zeros(1, 7))
    # rows of a batch are independent: a row that ends earlier never sees the next positions' values
    batch_rewards = torch.cat([rewards, torch.cat([r, torch.zeros(1, 4)], 1)])
    batch_values = torch.cat([values, torch.cat([v, torch.full((1, 4), 99.0)], 1)])
    batch_mask = torch.cat([mask, torch.tensor([[1.0, 1, 1, 0, 0, 0, 0]])])
    both, _ = gae(batch_rewards, batch_values, batch_mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(both[1:, :3], alone)
    torch.testing.assert_close(both[:1], adv)


def test_whitened_advantages_have_mean_zero_and_unit_std_over_completion_tokens():
    x, mask = torch.randn(3, 5) * 4 + 2, torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]]).float()
    w = whiten(x, mask)
    vals = w[mask.bool()]
    assert abs(float(vals.mean())) < 1e-5 and float(vals.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(w[~mask.bool()], torch.zeros(int((1 - mask).sum())))


# ---- the clipped value loss --------------------------------------------------------------------
@pytest.mark.parametrize("new, expect_loss, expect_clipped, expect_grad", [
    # old value 0, target 1, cliprange 0.2
    (0.1, 0.5 * 0.9 ** 2, 0.0, -0.9),  # inside the range: plain 0.5 * (V - G)^2, gradient V - G
    # moved 0.5 toward the target: the clipped V (0.2) is further from it; max() keeps that, which has no gradient
    (0.5, 0.5 * 0.8 ** 2, 1.0, 0.0),
    # moved away beyond the range: now the unclipped error is the larger, and its gradient pulls V back
    (-0.5, 0.5 * 1.5 ** 2, 0.0, -1.5),
])
def test_value_loss_keeps_the_more_pessimistic_of_clipped_and_unclipped(new, expect_loss, expect_clipped, expect_grad):
    v = torch.tensor([new], requires_grad=True)
    loss, clipped = value_loss(v, torch.tensor([0.0]), torch.tensor([1.0]), cliprange=0.2)
    loss.sum().backward()
    assert float(loss.detach()) == pytest.approx(expect_loss) and float(clipped) == expect_clipped
    assert float(v.grad) == pytest.approx(expect_grad)


def test_ppo_loss_at_a_rollouts_first_use_is_the_policy_gradient_plus_the_value_loss():
    from mmlab.config import get_preset
    from mmlab.model.lm import MiniMindLM
    from mmlab.train.grpo import token_logprobs
    from mmlab.train.ppo import PPOLoss, ValueModel

    model, critic = MiniMindLM(get_preset("nano")), ValueModel(MiniMindLM(get_preset("nano")))
    x = torch.randint(0, 128, (2, 8))
    y = x.roll(-1, 1)
    y[:, :4] = -100
    mask = (y != -100).float()
    adv, returns = torch.randn(2, 8) * mask, torch.ones(2, 8) * mask
    with torch.no_grad():
        old, old_values = token_logprobs(model, x, y), critic(x)
    assert torch.equal(old_values, torch.zeros(2, 8))  # the zero-initialised head: V = 0 at the start
    loss, n, metrics = PPOLoss(critic, vf_coef=0.5)(model, (x, y, old, old_values, adv, returns))
    assert n == 8 and metrics["clip_fraction"] == 0 and metrics["value_clip_fraction"] == 0
    assert float(loss.detach()) == pytest.approx(float(-(adv * mask).sum() + 0.5 * 0.5 * mask.sum()), rel=1e-5)


# ---- learning and the stage --------------------------------------------------------------------
def test_ppo_learns_what_the_reward_asks_for(base_ckpt, tmp_path):  # noqa: F811
    """The GRPO learning test's reward (answers that start with "a") and rollouts (4 prompts x 8 completions
    per rollout batch), each batch used for 2 steps: the reward rises well above its start, and the critic's
    values rise with it."""
    from mmlab.train.checkpoint import load_checkpoint_tokenizer
    from mmlab.train.grpo import RLPrompt
    from mmlab.train.ppo import PPOLoss, PPORolloutSource, PPOTrainer, ValueModel

    model, tok = load_model(base_ckpt), load_checkpoint_tokenizer(base_ckpt)
    critic = ValueModel(load_model(base_ckpt))
    prompts = [RLPrompt([{"role": "user", "content": f"Say a word ({i})."}], "") for i in range(20)]
    source = PPORolloutSource(model, tok, prompts, critic, None, kl_coef=0.0, group_size=8, max_new_tokens=3,
                              ppo_epochs=2, reward=lambda text, answer, finished: float(text.lstrip().startswith("a")))
    cfg = tcfg(tmp_path / "ppo", max_iters=40, batch_size=4, lr=1e-2, eval_interval=40, warmup_iters=0)
    PPOTrainer(model, PPOLoss(critic), source, cfg, critic).fit()
    rewards = [r["reward"] for r in source.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert len(rewards) == 20 and last > first + 0.3 and last > 0.5, rewards
    assert source.history[-1]["value"] > 0.5  # V learned that rewards come


@pytest.fixture(scope="module")
def sft_ckpt(base_ckpt, tmp_path_factory):  # noqa: F811
    from mmlab.train.sft import sft

    out = tmp_path_factory.mktemp("sft")
    sft(base_ckpt, "synthetic-tasks", tcfg(out), evaluate=False)
    return out


def test_ppo_stage_reports_memory_and_resumes_its_critic(sft_ckpt, tmp_path):
    from mmlab.train.checkpoint import load_trainer_state
    from mmlab.train.config import TrainConfig
    from mmlab.train.ppo import ppo

    record = ppo(sft_ckpt, tcfg(tmp_path / "ppo", max_iters=4, batch_size=2, eval_interval=4), group_size=2,
                 ppo_epochs=2, max_new_tokens=6, n_prompts=50, n_heldout=8)
    assert len(record["rollouts"]) == 2 and {"reward", "accuracy", "kl", "value"} <= set(record["rollouts"][0])
    assert {"exact_match", "samples"} <= set(record["before"]) and record["heldout_prompts"] == 8
    assert record["memory"]["peak_rss_mib"] > 0 and record["memory"]["model_state_mib"] > 0
    assert record["wall_s"] > 0 and record["stage"] == "ppo" and record["lam"] == 0.95
    report = json.loads((tmp_path / "ppo" / "ppo_eval.json").read_text())
    assert report["after"]["exact_match"] == record["after"]["exact_match"]
    load_model(tmp_path / "ppo")  # a plain policy checkpoint: the critic is in the trainer state only
    saved = load_trainer_state(tmp_path / "ppo")["critic"]
    assert "head.weight" in saved["model"] and saved["optimizer"]["state"]
    assert float(saved["model"]["head.weight"].abs().sum()) > 0  # the critic was trained
    # a resumed trainer starts from the saved critic (weights and AdamW moments), not from a fresh one
    from mmlab.train.checkpoint import load_checkpoint_tokenizer
    from mmlab.train.grpo import task_prompts
    from mmlab.train.ppo import PPOLoss, PPORolloutSource, PPOTrainer, ValueModel

    critic = ValueModel(load_model(sft_ckpt))
    source = PPORolloutSource(load_model(sft_ckpt), load_checkpoint_tokenizer(sft_ckpt), task_prompts(4), critic, None,
                              kl_coef=0.0)
    trainer = PPOTrainer(source.model, PPOLoss(critic), source, TrainConfig.for_resume(tmp_path / "ppo", max_iters=6),
                         critic, resume=True)
    assert torch.equal(critic.head.weight.cpu(), saved["model"]["head.weight"])
    assert trainer.critic_optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()
    again = ppo(None, TrainConfig.for_resume(tmp_path / "ppo", max_iters=6), resume=True)
    assert again["steps"] == 2 and len(again["rollouts"]) == 3 and again["before"] == record["before"]


def test_train_ppo_cli_smoke(sft_ckpt, tmp_path, monkeypatch, capsys):
    from mmlab.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["train", "ppo", "--base", str(sft_ckpt), "--out", "o", "--max-iters", "2", "--batch-size", "2",
            "--eval-interval", "2", "--log-interval", "1", "--group-size", "1", "--ppo-epochs", "1",
            "--max-new-tokens", "4", "--gamma", "0.99", "--lam", "0.9", "--vf-coef", "0.5", "--cliprange-value", "0.1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rollout reward" in out and "peak RSS" in out and "report o/ppo_eval.json" in out
    report = json.loads((tmp_path / "o" / "ppo_eval.json").read_text())
    assert (report["gamma"], report["lam"], report["vf_coef"], report["cliprange_value"]) == (0.99, 0.9, 0.5, 0.1)
    assert report["group_size"] == 1 and report["ppo_epochs"] == 1


@pytest.mark.parametrize("flags, fragment", [
    (["--gamma", "0"], "gamma=0.0 must be in (0, 1]"),
    (["--lam", "1.5"], "lam=1.5 in [0, 1]"),
    (["--vf-coef", "0"], "vf_coef=0.0 and cliprange_value=0.2 must be > 0"),
    (["--cliprange-value", "-1"], "cliprange_value=-1.0 must be > 0"),
    (["--dtype", "fp16"], "PPO trains with --dtype fp32 or bf16"),
    (["--tasks", "add,bogus"], "tasks ['bogus']: choose from"),
    (["--temperature", "0"], "temperature=0.0 must be > 0"),
])
def test_bad_ppo_flags_are_one_clear_line_before_any_work(flags, fragment, tmp_path, monkeypatch, capsys):
    from mmlab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "ppo", "--base", "x", "--out", "o", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "o").exists()
