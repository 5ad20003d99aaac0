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
], ids=["gqa-tied", "mha-untied-linear", "mqa-yarn"])
def test_export_loads_in_transformers_and_imports_back(bpe, tmp_path, changes):
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, max_seq_len=192, **changes).replace(name="exported")
    ours = random_model(cfg)
    save_checkpoint(tmp_path / "ckpt", ours, bpe)
    report = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert report["notes"] == []

    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
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
