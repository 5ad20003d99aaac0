"""LoRA written from scratch: against Hugging Face `peft` (same weights -> same outputs and gradients),
merge / unmerge, adapter-only save and load, and clear errors."""

import pytest
import torch
import transformers

from mmlab.config import get_preset
from mmlab.errors import ConfigError, MMLabError
from mmlab.model import MiniMindLM
from mmlab.model.hf import to_hf_state_dict, to_llama_config_dict
from mmlab.model.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    load_adapter,
    merge_lora,
    remove_lora,
    save_adapter,
    trainable_parameters,
    unmerge_lora,
)

CFG = get_preset("nano", hidden_size=64, n_heads=4, n_kv_heads=2, n_layers=2, vocab_size=97)
HF_NAMES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
            "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
            "down_proj": "mlp.down_proj"}


def hf_name(ours: str) -> str:
    """blocks.1.attn.q_proj.lora_A -> base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight"""
    _, layer, _, proj, part = ours.split(".")
    return f"base_model.model.model.layers.{layer}.{HF_NAMES[proj]}.{part}.default.weight"


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"]], ids=["qv", "all-linear"])
def test_matches_peft_outputs_and_gradients(targets):
    import peft

    torch.manual_seed(0)
    ours = MiniMindLM(CFG)
    llama_cfg = transformers.LlamaConfig(**to_llama_config_dict(CFG))
    llama_cfg._attn_implementation = "eager"
    theirs = transformers.LlamaForCausalLM(llama_cfg)
    theirs.load_state_dict(to_hf_state_dict(ours.state_dict(), CFG), strict=False)
    lcfg = LoRAConfig(rank=4, alpha=8, target_modules=targets)
    adapted = apply_lora(ours, lcfg)
    assert len(adapted) == CFG.n_layers * len(targets)
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    # B starts at zero in both, so the adapted model *is* the base model; give B values so the test means something
    their_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.05)
                their_params[hf_name(name)].copy_(p)
    ours.eval()
    theirs.eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 12))
    torch.testing.assert_close(ours(idx).logits, theirs(idx).logits, atol=1e-5, rtol=1e-4)
    # gradients: the same loss on both sides (mean next-token cross-entropy over the same targets)
    ours.zero_grad()
    theirs.zero_grad()
    logits_o, logits_t = ours(idx).logits, theirs(idx).logits
    loss_fn = torch.nn.functional.cross_entropy
    loss_fn(logits_o[:, :-1].flatten(0, 1), idx[:, 1:].flatten()).backward()
    loss_fn(logits_t[:, :-1].flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, their_params[hf_name(name)].grad, atol=1e-6, rtol=1e-4, msg=name)
    trainable, _total = trainable_parameters(ours)
    assert trainable == sum(p.numel() for p in their_params.values() if p.requires_grad)
    assert trainable == sum(4 * (m.base.in_features + m.base.out_features)
                            for n, m in ours.named_modules() if hasattr(m, "lora_A"))


def test_starts_as_the_base_model_and_merge_unmerge_round_trip():
    torch.manual_seed(0)
    model = MiniMindLM(CFG).eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 10))
    base = model(idx).logits
    base_weight = model.blocks[0].attn.q_proj.weight.clone()
    apply_lora(model, LoRAConfig(rank=2, alpha=4, target_modules=["q_proj", "down_proj"]))
    torch.testing.assert_close(model(idx).logits, base)  # B = 0: nothing changed yet
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    adapted = model(idx).logits
    assert (adapted - base).abs().max() > 1e-3
    merge_lora(model)
    torch.testing.assert_close(model(idx).logits, adapted, atol=1e-5, rtol=1e-4)
    unmerge_lora(model)
    assert torch.equal(model.blocks[0].attn.q_proj.base.weight, base_weight)  # bit for bit
    torch.testing.assert_close(model(idx).logits, adapted, atol=1e-5, rtol=1e-4)
    remove_lora(model)
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(idx).logits, adapted, atol=1e-5, rtol=1e-4)


def test_only_the_adapter_trains_and_it_saves_and_loads_alone(tmp_path):
    torch.manual_seed(0)
    model = MiniMindLM(CFG)
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.1, target_modules=["all-linear"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, CFG.vocab_size, (4, 16))
    first = None
    for _ in range(20):
        loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5  # it learns
    for n, p in model.named_parameters():
        if ".lora_" not in n:
            assert torch.equal(p, frozen[n.replace(".base.", ".")]), n  # the base model never moved
    path = save_adapter(model, tmp_path / "adapter")
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 0.2 * sum(p.numel() * 4 for p in frozen.values())
    model.eval()
    fresh = MiniMindLM(CFG)
    fresh.load_state_dict(base_state)
    load_adapter(fresh, path)
    fresh.eval()
    torch.testing.assert_close(fresh(idx).logits, model(idx).logits)
    assert set(adapter_state_dict(fresh)) == set(adapter_state_dict(model))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="invalid regular expression"):
        LoRAConfig(target_modules=["re:("])
    model = MiniMindLM(CFG)
    with pytest.raises(ConfigError, match="match no linear layer; the model has: .*q_proj"):
        apply_lora(model, LoRAConfig(target_modules=["query"]))
    apply_lora(model, LoRAConfig(target_modules=["re:blocks\\.0\\.attn\\.q_proj"]))
    assert [n for n, _ in model.named_parameters() if n.endswith("lora_A")] == ["blocks.0.attn.q_proj.lora_A"]
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, LoRAConfig())
    tied = MiniMindLM(CFG)  # the LM head is the embedding matrix: adapting it would change both
    with pytest.raises(ConfigError, match="'lm_head' shares its weight with tok_emb.weight"):
        apply_lora(tied, LoRAConfig(target_modules=["lm_head"]))
    save_adapter(model, tmp_path / "a")
    other = MiniMindLM(get_preset("nano", hidden_size=32, n_heads=4, n_layers=2, vocab_size=97))
    before = {n: (p.clone(), p.requires_grad) for n, p in other.named_parameters()}
    with pytest.raises(ConfigError, match="shape"):
        load_adapter(other, tmp_path / "a")
    after = dict(other.named_parameters())  # a failed load leaves the model as it was
    assert set(after) == set(before) and not any(isinstance(m, LoRALinear) for m in other.modules())
    assert all(torch.equal(after[n], p) and after[n].requires_grad == g for n, (p, g) in before.items())
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        load_adapter(MiniMindLM(CFG), tmp_path)


def test_a_lora_checkpoint_holds_the_untouched_base_and_the_adapter(tmp_path):
    from safetensors.torch import load_file

    from mmlab.train.checkpoint import load_model, load_weights, save_checkpoint

    torch.manual_seed(0)
    model = MiniMindLM(CFG)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lcfg = LoRAConfig(rank=2, alpha=4, target_modules=["q_proj", "up_proj"])
    apply_lora(model, lcfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.1)
    model.eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 10))
    expected = model(idx).logits
    merge_lora(model)  # saving a merged model still stores the base as it was
    save_checkpoint(tmp_path / "ckpt", model)
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    for k, v in stored.items():
        assert torch.equal(v, base_state[k]), k
    loaded = load_model(tmp_path / "ckpt").eval()  # a plain model, the adapter merged in
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(loaded(idx).logits, expected, atol=1e-5, rtol=1e-4)
    again = MiniMindLM(CFG)
    apply_lora(again, lcfg)
    load_weights(again, tmp_path / "ckpt")  # what resume does: the LoRA model gets base and adapter back
    again.eval()
    torch.testing.assert_close(again(idx).logits, expected, atol=1e-5, rtol=1e-4)
    other = MiniMindLM(CFG)
    apply_lora(other, LoRAConfig(rank=4, alpha=4, target_modules=["q_proj", "up_proj"]))
    with pytest.raises(MMLabError, match="adapter config"):
        load_weights(other, tmp_path / "ckpt")


def test_train_modules_are_trained_in_full_saved_with_the_adapter_and_the_base_stays_untouched(tmp_path):
    """``train_modules`` (peft's modules_to_save): the tied embedding trains beside the adapter; the
    checkpoint keeps the base's original embedding and the adapter the trained one; loading gives back the
    trained model."""
    from mmlab.train.checkpoint import MODEL_FILE, load_model, save_checkpoint

    torch.manual_seed(0)
    model = MiniMindLM(CFG)
    original = model.tok_emb.weight.detach().clone()
    apply_lora(model, LoRAConfig(rank=2, target_modules=["q_proj"], train_modules=["lm_head"]))  # tied: = tok_emb
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "tok_emb.weight" in trainable and all(".lora_" in n or n == "tok_emb.weight" for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(CFG.vocab_size, (2, 9))
    for _ in range(3):
        model(x[:, :-1], targets=x[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(model.tok_emb.weight, original)
    assert "tok_emb.weight" in adapter_state_dict(model)
    save_checkpoint(tmp_path / "ckpt", model)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "ckpt" / MODEL_FILE))["tok_emb.weight"], original)
    with torch.no_grad():
        expected = model(x).logits
        assert torch.allclose(load_model(tmp_path / "ckpt")(x).logits, expected, atol=1e-5)
    with pytest.raises(ConfigError, match=r"train_modules \['embedding'\] match no parameter"):
        apply_lora(MiniMindLM(CFG), LoRAConfig(train_modules=["embedding"]))
