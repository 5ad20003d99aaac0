"""`mmlab export hf` / `mmlab import hf`: transformers loads the export and computes what we compute (logits,
greedy text, chat-template ids); an import gives back the same checkpoint; what cannot be exported is a
clear one-line error."""

import json

import pytest
import torch
import transformers  # a declared test dependency: a broken install must fail, not skip, these tests

from mmlab.cli import main
from mmlab.config import RopeScaling, get_preset
from mmlab.data.synthetic import story_corpus
from mmlab.hf_export import ExportError, export_hf, import_hf
from mmlab.infer.generate import generate
from mmlab.model import MiniMindLM
from mmlab.model.hf import to_llama_config_dict
from mmlab.tokenizer import ENDOFTEXT, IM_END, IM_START, CharTokenizer, encode_chat, load_tokenizer, train_bpe
from mmlab.tokenizer.teaching_bpe import TeachingBPE
from mmlab.train.checkpoint import load_model, save_checkpoint

MESSAGES = [{"role": "system", "content": "You are a kind helper."},
            {"role": "user", "content": "What is 12 + 30?"},
            {"role": "assistant", "content": "42"},
            {"role": "user", "content": "Tell me about Lily's red kite!"}]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(story_corpus(20_000), vocab_size=300)


def random_model(cfg):
    """Weights far from init (sharp, varied logits), so greedy decoding does not repeat one token."""
    model = MiniMindLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.3)
    return model


def hf_ids(encoded):
    """apply_chat_template returns a list (transformers 4) or a BatchEncoding (5)."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def hf_greedy(hf_model, ids, n, stops):
    out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    cut = [i for i, t in enumerate(out) if t in stops]
    return out[:cut[0]] if cut else out


@pytest.mark.parametrize("changes", [
    {},  # nano: GQA 4:2, tied embeddings
    {"n_kv_heads": None, "tie_embeddings": False, "rope_theta": 5e4,
     "rope_scaling": RopeScaling(kind="linear", factor=2.0)},
    {"n_kv_heads": 1, "rope_scaling": RopeScaling(kind="yarn", factor=4.0, original_max_seq_len=32), "dropout": 0.1},
    {"qk_norm": True},  # a Qwen3
    {"qk_norm": True, "n_experts": 4, "n_experts_per_tok": 1, "tie_embeddings": False},  # Qwen3-MoE, MiniMind-3's
    {"qk_norm": True, "n_experts": 4, "n_experts_per_tok": 2},  # Qwen3-MoE, renormalised top-2
], ids=["gqa-tied", "mha-untied-linear", "mqa-yarn", "qwen3", "qwen3-moe-top1", "qwen3-moe-top2"])
def test_export_loads_in_transformers_and_imports_back(bpe, tmp_path, changes):
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, max_seq_len=192, **changes).replace(name="exported")
    ours = random_model(cfg)
    save_checkpoint(tmp_path / "ckpt", ours, bpe)
    report = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert report["notes"] == []

    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    expected = "Qwen3Moe" if cfg.n_experts else "Qwen3" if cfg.qk_norm else "Llama"
    assert type(theirs).__name__ == f"{expected}ForCausalLM"
    assert theirs.config.tie_word_embeddings == cfg.tie_embeddings
    assert theirs.config.num_key_value_heads == cfg.kv_heads
    # logits
    idx = torch.randint(0, cfg.vocab_size, (2, 50))
    with torch.no_grad():
        assert (theirs(idx).logits - ours(idx).logits).abs().max().item() <= 1e-4
    # the chat template gives our ids
    ids, _ = encode_chat(bpe, MESSAGES, add_generation_prompt=True)
    assert hf_ids(tok.apply_chat_template(MESSAGES, add_generation_prompt=True)) == ids
    assert hf_ids(tok.apply_chat_template(MESSAGES[:3])) == encode_chat(bpe, MESSAGES[:3])[0]
    # greedy generation: the same tokens and the same text
    stops = [bpe.token_to_id(IM_END), bpe.token_to_id(ENDOFTEXT)]
    mine = generate(ours, ids, 24, temperature=0.0, stop_tokens=stops)[0]
    assert hf_greedy(theirs, ids, 24, stops) == mine and len(set(mine)) > 1
    assert tok.decode(mine) == bpe.decode(mine)
    # plain text round trips through the HF tokenizer
    text = "Once upon a time, Mia found a shiny shell. ünïcødé ✓"
    assert tok.encode(text, add_special_tokens=False) == bpe.encode(text) and tok.decode(bpe.encode(text)) == text

    # import back: the same config, weights and tokenizer
    imported = import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_model(tmp_path / "back").eval()
    assert back.cfg == cfg and back.cfg.name == cfg.name
    with torch.no_grad():
        assert torch.equal(back(idx).logits, ours(idx).logits)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_tokenizer(tmp_path / "back").to_json() == bpe.to_json()
    assert imported["tokenizer"] == "BPETokenizer"


def test_char_tokenizer_exports_as_a_character_wordlevel(tmp_path):
    text = "\n".join(story_corpus(3_000))
    char = CharTokenizer.from_corpus(text, special_tokens=[ENDOFTEXT, IM_START, IM_END], unk="replace")
    cfg = get_preset("nano", vocab_size=char.vocab_size, max_seq_len=96)
    ours = random_model(cfg)
    save_checkpoint(tmp_path / "ckpt", ours, char)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    sample = "Tom saw a red ball.\nIt fell!  <|endoftext|>Zoe: é?"  # "é" is unknown: <unk> in both
    assert tok.encode(sample, add_special_tokens=False) == char.encode(sample)
    ids = char.encode("Tom saw a red ball.\nIt fell!")
    assert tok.decode(ids) == char.decode(ids)
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert hf_ids(tok.apply_chat_template(msgs, add_generation_prompt=True)) == encode_chat(char, msgs, True)[0]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (theirs(x).logits - ours(x).logits).abs().max().item() <= 1e-4

    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_tokenizer(tmp_path / "back")
    assert isinstance(back, CharTokenizer) and back.to_json() == char.to_json()


def test_what_cannot_be_exported_is_said(tmp_path, bpe, capsys):
    # a non-Llama model: a one-line error naming the switches, and exit 1 from the CLI
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, norm="layernorm", ffn_act="gelu")
    save_checkpoint(tmp_path / "ln", MiniMindLM(cfg), bpe)
    with pytest.raises(ExportError, match="norm='layernorm'.*ffn_act='gelu'"):
        export_hf(tmp_path / "ln", tmp_path / "out")
    assert main(["export", "hf", "--ckpt", str(tmp_path / "ln"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be exported as a Llama" in err and not (tmp_path / "out").exists()

    # a teaching BPE: the model is exported, the tokenizer is not, and the report says so
    teaching = TeachingBPE.train("the cat sat on the mat " * 20, vocab_size=270)
    save_checkpoint(tmp_path / "tb", MiniMindLM(get_preset("nano", vocab_size=teaching.vocab_size)), teaching)
    report = export_hf(tmp_path / "tb", tmp_path / "tb-hf")
    assert "tokenizer.json" not in report["files"] and "not exported" in report["notes"][0]

    # an existing export is not replaced without --overwrite; with it, it is
    save_checkpoint(tmp_path / "ok", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    assert main(["export", "hf", "--ckpt", str(tmp_path / "ok"), "--out", str(tmp_path / "tb-hf")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "hf", "--ckpt", str(tmp_path / "ok"), "--out", str(tmp_path / "tb-hf"), "--overwrite"]) == 0
    assert (tmp_path / "tb-hf" / "tokenizer.json").is_file()
    # a folder of someone else's files is never overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a model's"):
        export_hf(tmp_path / "ok", tmp_path / "mine", overwrite=True)


def test_import_refuses_what_it_cannot_represent(tmp_path, bpe, capsys):
    save_checkpoint(tmp_path / "ok", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    export_hf(tmp_path / "ok", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())

    def edited(**changes):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **changes}))

    edited(model_type="qwen2")
    assert main(["import", "hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model_type='qwen2'" in err
    edited(attention_bias=True, hidden_act="gelu")
    with pytest.raises(ExportError, match="hidden_act='gelu'.*attention_bias"):
        import_hf(tmp_path / "hf", tmp_path / "x")
    edited(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0})
    with pytest.raises(ExportError, match="rope_type='llama3'"):
        import_hf(tmp_path / "hf", tmp_path / "x")
    # a plain transformers Llama (no mmlab stash) imports from the Llama fields alone
    (tmp_path / "hf" / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "mmlab_config"}))
    assert main(["import", "hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 0
    nano = get_preset("nano", vocab_size=bpe.vocab_size)
    assert to_llama_config_dict(load_model(tmp_path / "x").cfg) == to_llama_config_dict(nano)
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="only safetensors"):
        import_hf(tmp_path / "hf", tmp_path / "y")


def test_shape_mismatches_and_quantized_checkpoints_are_one_line_errors(tmp_path, bpe):
    """Weights that do not fit the folder's config, and a quantized checkpoint, are ExportErrors (the CLI prints
    one line), never a RuntimeError / KeyError traceback."""
    from mmlab.infer.quant import quantize_model

    model = MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size))
    save_checkpoint(tmp_path / "ok", model, bpe)
    export_hf(tmp_path / "ok", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.pop("mmlab_config", None)
    config["intermediate_size"] = config["intermediate_size"] + 8  # the safetensors keep the old width
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="do not fit its config.*other shapes"):
        import_hf(tmp_path / "hf", tmp_path / "x")
    quantize_model(model, bits=8)
    save_checkpoint(tmp_path / "q8", model, bpe)
    with pytest.raises(ExportError, match="is quantized"):
        export_hf(tmp_path / "q8", tmp_path / "hf2")


@pytest.mark.parametrize("config_changes, message", [
    ({"num_attention_heads": 0}, "num_attention_heads=0 must be a positive integer"),
    ({"hidden_size": "wide"}, "hidden_size='wide' must be a positive integer"),
    ({"vocab_size": None}, "'vocab_size' is missing"),
    ({"rope_parameters": [1, 2], "rope_scaling": None}, "must be an object"),
    ({"rope_parameters": {"rope_type": "linear", "factor": "x"}}, "rope factor 'x' is not a number"),
])
def test_malformed_hf_configs_are_one_line_errors(tmp_path, bpe, capsys, config_changes, message):
    save_checkpoint(tmp_path / "ok", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    export_hf(tmp_path / "ok", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.pop("mmlab_config")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, **config_changes}))
    assert main(["import", "hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("tokenizer_json, message", [
    ("[1, 2, 3]", "must hold a JSON object"),
    ('{"model": "BPE"}', "must be JSON objects"),
    ('{"model": {"type": "WordLevel", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "Split", "pattern": '
     '{"Regex": "CHAR"}}, "added_tokens": [{"id": 1}]}', "malformed character vocabulary"),
    ('{"model": {"type": "BPE", "vocab": 7}}', "cannot read tokenizer.json"),
])
def test_malformed_tokenizer_files_are_one_line_errors(tmp_path, bpe, capsys, tokenizer_json, message):
    from mmlab.hf_export import CHAR_SPLIT

    save_checkpoint(tmp_path / "ok", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    export_hf(tmp_path / "ok", tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text(tokenizer_json.replace('"CHAR"', json.dumps(CHAR_SPLIT)))
    assert main(["import", "hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


# ---- MiniMind2's own folders ------------------------------------------------------------------------------
def minimind2_config(**changes):
    """config.json as MiniMind2's MiniMindConfig.save_pretrained writes it (small sizes)."""
    return {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "aux_loss_alpha": 0.1,
            "bos_token_id": 1, "eos_token_id": 2, "dropout": 0.0, "flash_attn": True, "hidden_act": "silu",
            "hidden_size": 64, "intermediate_size": None, "max_position_embeddings": 32768,
            "n_routed_experts": 4, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 4,
            "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0, "scoring_func": "softmax", "seq_aux": True, "torch_dtype": "float32",
            "transformers_version": "4.57.1", "use_moe": False, "vocab_size": 300, **changes}


def minimind2_folder(path, config, state, bpe, as_bin=False):
    from safetensors.torch import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if as_bin:
        torch.save(state, path / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text(bpe.to_json())
    return path


@pytest.mark.parametrize("as_bin", [False, True], ids=["safetensors-head-saved-once", "bin-tied-copy"])
def test_minimind2_folder_imports_with_transformers_logits(bpe, tmp_path, as_bin):
    """A MiniMind2 dense model is a Llama with MiniMind's sizes: transformers' Llama on the same weights is the
    reference for the imported model's logits."""
    config = minimind2_config()
    ffn = 64 * ((int(64 * 8 / 3) + 63) // 64)  # MiniMind's rule for a null intermediate_size: 192
    llama_cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=ffn, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                         rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=True)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(llama_cfg).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.3)
    state = dict(reference.state_dict())
    if as_bin:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # a tied copy, saved twice
    else:
        state.pop("model.embed_tokens.weight")  # a tied pair saved once, under the head's name
    folder = minimind2_folder(tmp_path / "MiniMind2", config, state, bpe, as_bin=as_bin)
    assert main(["import", "hf", "--hf", str(folder), "--out", str(tmp_path / "mm")]) == 0
    ours = load_model(tmp_path / "mm").eval()
    assert ours.cfg.resolved_ffn_size == ffn and ours.cfg.tie_embeddings and ours.cfg.kv_heads == 2
    idx = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        assert (reference(idx).logits - ours(idx).logits).abs().max().item() <= 1e-4
    assert load_tokenizer(tmp_path / "mm").to_json() == bpe.to_json()


def test_minimind2_moe_folder_imports_and_minimind3_is_refused(bpe, tmp_path, capsys):
    cfg = get_preset("nano", vocab_size=300, n_experts=4, n_experts_per_tok=2, n_shared_experts=1,
                     max_seq_len=32768, rope_theta=1e6)
    ours = random_model(cfg)
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    rename = [("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"), ("attn.", "self_attn."),
              ("ffn.router", "mlp.gate"), ("ffn.shared", "mlp.shared_experts"), ("ffn.", "mlp.")]
    state = {}
    for k, v in ours.state_dict().items():
        if k == "lm_head.weight":
            continue
        name = names.get(k, k.replace("blocks.", "model.layers."))
        for a, b in rename:
            name = name.replace(a, b, 1) if a in name else name
        state[name] = v
    config = minimind2_config(use_moe=True, hidden_size=cfg.hidden_size, intermediate_size=cfg.resolved_ffn_size,
                              num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
                              num_hidden_layers=cfg.n_layers)
    folder = minimind2_folder(tmp_path / "MiniMind2-MoE", config, state, bpe)
    import_hf(folder, tmp_path / "mm")
    back = load_model(tmp_path / "mm").eval()
    assert (back.cfg.n_experts, back.cfg.n_shared_experts, back.cfg.n_experts_per_tok) == (4, 1, 2)
    idx = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, ours(idx).logits)
    # MiniMind's own YaRN variant is refused rather than imported with other frequencies
    scaled = minimind2_folder(tmp_path / "scaled", {**config, "inference_rope_scaling": True}, state, bpe)
    with pytest.raises(ExportError, match="MiniMind's own YaRN variant"):
        import_hf(scaled, tmp_path / "mm-scaled")
    # MiniMind-3 (QK-norm) is named, not half-imported
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(cfg.head_dim)
    folder3 = minimind2_folder(tmp_path / "minimind-3", config, state, bpe)
    assert main(["import", "hf", "--hf", str(folder3), "--out", str(tmp_path / "m3")]) == 1
    assert "a MiniMind-3 checkpoint (QK-norm in attention) in MiniMind's own format" in capsys.readouterr().err
    assert not (tmp_path / "m3").exists()


def test_a_qwen3_moe_saved_by_transformers_imports_with_its_logits(bpe, tmp_path):
    """A folder written by transformers itself (no mmlab stash; experts in whatever layout its version saves)."""
    config = transformers.Qwen3MoeConfig(vocab_size=bpe.vocab_size, hidden_size=64, intermediate_size=96,
                                         moe_intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                         norm_topk_prob=True, max_position_embeddings=128, tie_word_embeddings=False)
    theirs = transformers.Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    theirs.save_pretrained(tmp_path / "hf")
    bpe.save(tmp_path / "hf" / "tokenizer.json")
    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_model(tmp_path / "back").eval()
    assert (back.cfg.qk_norm, back.cfg.n_experts, back.cfg.n_experts_per_tok, back.cfg.resolved_ffn_size) == (
        True, 4, 2, 96)
    idx = torch.randint(0, bpe.vocab_size, (2, 40))
    with torch.no_grad():
        assert (back(idx).logits - theirs(idx).logits).abs().max().item() <= 1e-4
