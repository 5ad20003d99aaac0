"""`mmlab export gguf`: the file holds our config, vocabulary and weights (read back with gguf's own reader);
llama.cpp (through llama-cpp-python) loads it and computes our logits, our greedy text and our token ids;
what cannot be exported is a clear one-line error, and an existing file is never lost."""

import json
import os
import sys

import gguf  # the [gguf] extra, part of [test]: a broken install must fail, not skip, these tests
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmlab.cli import main
from mmlab.config import RopeScaling, get_preset
from mmlab.data.synthetic import story_corpus
from mmlab.errors import MMLabError
from mmlab.gguf_export import ARCHS, export_gguf, gguf_tensors, interleave_rope_rows
from mmlab.hf_export import CHAT_TEMPLATE, ExportError
from mmlab.infer.generate import generate
from mmlab.model import MiniMindLM
from mmlab.model.rope import apply_rope, precompute_rope
from mmlab.tokenizer import ENDOFTEXT, IM_END, IM_START, CharTokenizer, encode_chat, render_chat, train_bpe
from mmlab.tokenizer.teaching_bpe import TeachingBPE
from mmlab.train.checkpoint import save_checkpoint

MESSAGES = [{"role": "system", "content": "You are a kind helper."},
            {"role": "user", "content": "What is 12 + 30?"},
            {"role": "assistant", "content": "42"},
            {"role": "user", "content": "Tell me about Lily's red kite!"}]
TEXTS = ["Once upon a time, Mia found a shiny shell.", "Tom's dog didn't bark; they'll see 1234567 stars.",
         "  two  spaces,\n\nblank lines\t\ttabs   \n  and trailing   ", "ünïcødé ✓ 日本語 — emoji 🙂!",
         f"{ENDOFTEXT}Lily said hi.{IM_START}user\nhello{IM_END}\n", render_chat(MESSAGES, add_generation_prompt=True)]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(story_corpus(40_000), vocab_size=420)


def random_model(cfg, std=0.3):
    """Weights far from init (sharp, varied logits), so greedy decoding does not repeat one token."""
    model = MiniMindLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, std)
    return model


def field(reader, key):
    return reader.fields[key].contents()


# ---- always run: the file read back with gguf's reader ------------------------------------------
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_file_holds_our_config_vocabulary_and_weights(bpe, tmp_path, dtype):
    cfg = get_preset("nano", vocab_size=bpe.vocab_size + 12, max_seq_len=192, tie_embeddings=False,
                     rope_scaling=RopeScaling(kind="linear", factor=2.0))  # 12 padded embeddings, an LM head
    model = random_model(cfg)
    save_checkpoint(tmp_path / "ckpt", model, bpe)
    report = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype=dtype)
    assert report["notes"] == [] and report["bytes"] == (tmp_path / "m.gguf").stat().st_size
    r = gguf.GGUFReader(tmp_path / "m.gguf")

    meta = {"general.architecture": "llama", "llama.context_length": 192, "llama.embedding_length": 64,
            "llama.block_count": 2, "llama.feed_forward_length": cfg.resolved_ffn_size, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.rope.freq_base": 1e4,
            "llama.vocab_size": cfg.vocab_size, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0,
            "general.file_type": {"f32": 0, "f16": 1, "q8_0": 7}[dtype], "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
            "tokenizer.chat_template": CHAT_TEMPLATE}
    assert {k: field(r, k) for k in meta} == meta
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    vocab = bpe.hf.get_vocab()
    tokens = field(r, "tokenizer.ggml.tokens")
    assert tokens[:bpe.vocab_size] == sorted(vocab, key=vocab.get) and tokens[-1] == f"[PAD{cfg.vocab_size - 1}]"
    types = field(r, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and set(types[3:bpe.vocab_size]) == {gguf.TokenType.NORMAL}
    assert set(types[bpe.vocab_size:]) == {gguf.TokenType.UNUSED}
    merges = json.loads(bpe.to_json())["model"]["merges"]  # the same merges in the same order (= priority)
    assert field(r, "tokenizer.ggml.merges") == [" ".join(m) for m in merges] and len(merges) == bpe.vocab_size - 259

    # every tensor, in the file's layout: f32 exact, f16 exact to f16, Q8_0 within half a step of its block
    expected = gguf_tensors(model.state_dict(), cfg, ARCHS["llama"])
    found = {t.name: t for t in r.tensors}
    assert found.keys() == expected.keys() and "output.weight" in found and len(found) == 2 + 9 * 2 + 1
    for name, ours in expected.items():
        t = found[name]
        theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        ours = ours.detach().numpy()
        if ours.ndim == 1 or dtype == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(theirs, ours), name
        elif dtype == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            assert np.array_equal(theirs, ours.astype(np.float16).astype(np.float32)), name
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            blocks = np.abs(ours).reshape(-1, 32).max(axis=1, keepdims=True)
            err = np.abs(theirs - ours).reshape(-1, 32)
            # half a step of the block's scale amax/127, plus that scale's own rounding to f16 (times up to 127)
            assert (err <= blocks / 127 * 0.5 + blocks * 2**-10).all(), name


def test_tied_head_is_stored_once_and_q8_0_falls_back_to_f16_for_odd_rows(bpe, tmp_path):
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, ffn_size=40)  # rows of 40: no whole Q8_0 blocks
    save_checkpoint(tmp_path / "ckpt", random_model(cfg), bpe)
    report = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="q8_0")
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert "output.weight" not in kinds and kinds["token_embd.weight"] == "Q8_0"
    assert kinds["blk.0.ffn_down.weight"] == "F16" and kinds["blk.0.ffn_up.weight"] == "Q8_0"
    assert report["tensor_types"] == {"f32": 5, "q8_0": 13, "f16": 2}
    assert "2 matrices stay f16" in report["notes"][0] and "blk.0.ffn_down.weight" in report["notes"][0]


def test_a_qwen3_is_written_as_qwen3_with_its_qk_norms_and_rows_as_they_are(bpe, tmp_path):
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, qk_norm=True)
    model = random_model(cfg)
    save_checkpoint(tmp_path / "ckpt", model, bpe)
    report = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert report["arch"] == field(r, "general.architecture") == "qwen3" and report["tensors"] == 1 + 11 * 2 + 1
    assert field(r, "qwen3.attention.head_count_kv") == 2 and field(r, "tokenizer.ggml.pre") == "gpt-2"
    found = {t.name: t.data for t in r.tensors}
    block = model.blocks[1].attn
    for name, ours in (("attn_q", block.q_proj), ("attn_k", block.k_proj), ("attn_q_norm", block.q_norm),
                       ("attn_k_norm", block.k_norm)):  # llama.cpp's qwen3 rotates halves, as we do
        assert np.array_equal(found[f"blk.1.{name}.weight"], ours.weight.detach().numpy()), name
    moe = get_preset("nano", vocab_size=bpe.vocab_size, qk_norm=True, n_experts=4, n_experts_per_tok=2)
    save_checkpoint(tmp_path / "moe", MiniMindLM(moe), bpe)
    with pytest.raises(ExportError, match="a mixture of experts \\(n_experts=4\\).*dense Llama and Qwen3"):
        export_gguf(tmp_path / "moe", tmp_path / "moe.gguf")


def test_a_lora_checkpoint_is_exported_merged(bpe, tmp_path):
    from mmlab.model.lora import LoRAConfig, apply_lora
    from mmlab.train.checkpoint import load_model

    model = random_model(get_preset("nano", vocab_size=bpe.vocab_size))
    apply_lora(model, LoRAConfig(rank=2, alpha=4, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.1)
    save_checkpoint(tmp_path / "ckpt", model, bpe)
    report = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32")
    assert report["notes"] == ["the LoRA adapter is merged into the exported weights"]
    merged = load_model(tmp_path / "ckpt")
    found = {t.name: t.data for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    q = interleave_rope_rows(merged.blocks[0].attn.q_proj.weight.detach(), 4).numpy()
    assert np.array_equal(found["blk.0.attn_q.weight"], q)
    assert np.array_equal(found["blk.1.ffn_up.weight"], merged.blocks[1].ffn.up_proj.weight.detach().numpy())


def test_a_bpe_that_is_not_gpt2_style_is_refused(tmp_path):
    """llama.cpp's "gpt-2" pre-tokenizer is one regex; a BPE that splits text otherwise would encode differently."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mmlab.tokenizer import BPETokenizer

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.train_from_iterator(story_corpus(3_000), trainers.BpeTrainer(vocab_size=120, special_tokens=[ENDOFTEXT]))
    tok = BPETokenizer(hf)
    save_checkpoint(tmp_path / "ckpt", MiniMindLM(get_preset("nano", vocab_size=tok.vocab_size)), tok)
    with pytest.raises(ExportError, match="not a plain GPT-2-style byte-level BPE.*pre-tokenizer Whitespace"):
        export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")


def interleaved_rope(x, cos, sin):
    """RoPE as llama.cpp's llama rotates: the pairs (2i, 2i+1), pair i at frequency i.  x: (H, T, D)."""
    d = x.shape[-1]
    c, s = cos[:, : d // 2], sin[:, : d // 2]  # our tables repeat the d/2 frequencies twice
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)


def test_interleaving_the_rows_turns_our_rope_into_llama_cpps():
    """Rotating halves of x W^T (ours) and rotating adjacent pairs of x W_perm^T (llama.cpp) give the same
    vectors up to the same reordering, so every q . k, and hence attention, is the same."""
    n_heads, d, c, t = 3, 8, 12, 5
    w, x = torch.randn(n_heads * d, c), torch.randn(t, c)
    cos, sin = precompute_rope(d, t, 1e4)
    ours = apply_rope((x @ w.T).view(t, n_heads, d).transpose(0, 1), cos, sin)  # (H, T, D)
    theirs = interleaved_rope((x @ interleave_rope_rows(w, n_heads).T).view(t, n_heads, d).transpose(0, 1), cos, sin)
    perm = interleave_rope_rows(torch.arange(d).view(d, 1).float(), 1).view(-1).long()  # row j of W_perm is row perm[j]
    assert torch.allclose(theirs, ours[..., perm], atol=1e-5)
    assert torch.allclose(theirs @ theirs.transpose(1, 2), ours @ ours.transpose(1, 2), atol=1e-4)


def test_what_cannot_be_exported_is_a_one_line_error(tmp_path, bpe, capsys):
    def refused(folder, match, **kw):
        with pytest.raises(ExportError, match=match):
            export_gguf(tmp_path / folder, tmp_path / "out.gguf", **kw)
        assert main(["export", "gguf", "--ckpt", str(tmp_path / folder), "--out", str(tmp_path / "out.gguf")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mmlab: error: ") and not (tmp_path / "out.gguf").exists()

    save_checkpoint(tmp_path / "ln", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size, norm="layernorm",
                                                           ffn_act="gelu")), bpe)
    refused("ln", "cannot be exported as a GGUF llama: norm='layernorm'.*ffn_act='gelu'")
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, rope_scaling=RopeScaling(kind="yarn", beta_fast=16.0))
    save_checkpoint(tmp_path / "betas", MiniMindLM(cfg), bpe)
    refused("betas", "beta_fast=16.0")
    char = CharTokenizer.from_corpus("the cat sat", special_tokens=[ENDOFTEXT, IM_START, IM_END])
    save_checkpoint(tmp_path / "char", MiniMindLM(get_preset("nano", vocab_size=char.vocab_size)), char)
    refused("char", "has a CharTokenizer: the GGUF export needs a byte-level BPE")
    teaching = TeachingBPE.train("the cat sat on the mat " * 20, vocab_size=270)
    save_checkpoint(tmp_path / "tb", MiniMindLM(get_preset("nano", vocab_size=teaching.vocab_size)), teaching)
    refused("tb", "has a TeachingBPE")
    save_checkpoint(tmp_path / "small", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size - 1)), bpe)
    refused("small", f"the tokenizer has {bpe.vocab_size} tokens but the model only {bpe.vocab_size - 1}")
    from mmlab.infer.quant import quantize_model

    model = MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size))
    quantize_model(model, bits=8)
    save_checkpoint(tmp_path / "q8", model, bpe)
    refused("q8", "is quantized")
    with pytest.raises(ExportError, match="'q4' is not one of f32, f16, q8_0"):
        export_gguf(tmp_path / "q8", tmp_path / "out.gguf", dtype="q4")
    with pytest.raises(MMLabError, match="checkpoint not found"):
        export_gguf(tmp_path / "nowhere", tmp_path / "out.gguf")


def test_an_existing_file_is_kept_unless_overwrite_and_a_failed_export_keeps_it(tmp_path, bpe, capsys, monkeypatch):
    save_checkpoint(tmp_path / "ckpt", random_model(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"an earlier export")
    args = ["export", "gguf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(out), "--type", "q8_0"]
    assert main(args) == 1 and "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"an earlier export"
    with pytest.raises(ExportError, match="is a folder"):
        export_gguf(tmp_path / "ckpt", tmp_path)

    import mmlab.gguf_export as ge

    def broken(*a, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ge, "_quantize", broken)  # a failure in the middle of writing
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(tmp_path / "ckpt", out, overwrite=True)
    assert out.read_bytes() == b"an earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.gguf"]
    monkeypatch.undo()

    assert main([*args, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "MiB" in printed and "20 tensors" in printed and "type q8_0" in printed
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 7


def test_without_the_gguf_package_the_error_says_what_to_install(tmp_path, bpe, monkeypatch):
    save_checkpoint(tmp_path / "ckpt", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(MMLabError, match=r'pip install "minimind-lab\[gguf\]"'):
        export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")


# ---- llama.cpp itself (llama-cpp-python) -----------------------------------------------------------
def require_llama_cpp():
    """llama-cpp-python, or a skip where it is not installed; .ci/run builds it and sets
    MMLAB_LLAMACPP_TESTS=required, so that in CI a failed install fails these tests instead of skipping them."""
    if os.environ.get("MMLAB_LLAMACPP_TESTS") == "required":
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp")


@pytest.fixture
def llama(monkeypatch):
    """Open a GGUF file with llama.cpp: all logits kept, an f32 KV cache (its default f16 cache alone moves our
    logits by ~3e-2), no flash attention."""
    llama_cpp = require_llama_cpp()
    if "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode():
        # A build with AMX (GGML_NATIVE on an AMX Xeon) repacks Q8_0 matrices for its AMX kernels and then
        # segfaults in ggml_backend_amx_mul_mat on any batch of more than one token (llama-cpp-python 0.3.36).
        # Not our file: without the extra buffer types llama.cpp runs the same file on its AVX-512 kernels.
        default = llama_cpp.llama_cpp.llama_model_default_params

        def no_amx_repack():
            params = default()
            params.use_extra_bufts = False
            return params

        monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", no_amx_repack)

    def load(path, n_ctx):
        # one thread: llama.cpp's OpenMP threads spin while they wait, and on 2 busy cores that made the file
        # 10 to 76 s long with 2 threads, against a steady 17 s with one
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=1,
                               type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False,
                               verbose=False)

    return load


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)  # a copy: llama.cpp reuses the buffer


# Largest |logit difference| allowed, per weight type, on models whose logits span about 13 to 17 (measured on
# four configs like these: f32 <= 2.2e-5, f16 <= 0.035, Q8_0 <= 1.14). f32: float rounding. f16: the weights
# rounded to f16, and llama.cpp rounds activations to f16 for those matmuls. Q8_0: 8-bit weights in blocks of
# 32, and llama.cpp quantizes the activations to 8 bits too; our own model on the file's Q8_0 weights moves
# about as much. A wrong RoPE layout or scaling moves them by about their whole span.
TOLERANCE = {"f32": 1e-3, "f16": 0.1, "q8_0": 2.0}


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("changes", [
    {},  # nano: GQA 4:2, tied embeddings
    {"n_kv_heads": None, "tie_embeddings": False, "rope_theta": 5e4,
     "rope_scaling": RopeScaling(kind="linear", factor=2.0)},
    {"n_kv_heads": 1, "rope_scaling": RopeScaling(kind="yarn", factor=4.0, original_max_seq_len=48)},
    {"rope_scaling": RopeScaling(kind="ntk", factor=4.0)},
    {"qk_norm": True},  # a Qwen3
    {"qk_norm": True, "tie_embeddings": False, "rope_scaling": RopeScaling(kind="yarn", factor=4.0,
                                                                          original_max_seq_len=48)},
], ids=["gqa-tied", "mha-untied-linear", "mqa-yarn", "ntk", "qwen3", "qwen3-untied-yarn"])
def test_llama_cpp_computes_our_logits_and_greedy_text(bpe, tmp_path, llama, changes, dtype):
    cfg = get_preset("nano", vocab_size=bpe.vocab_size, max_seq_len=256, **changes)  # llama.cpp pads n_ctx to 256
    ours = random_model(cfg, std=0.2)
    save_checkpoint(tmp_path / "ckpt", ours, bpe)
    export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype=dtype)
    llm = llama(tmp_path / "m.gguf", cfg.max_seq_len)
    assert llm.metadata["general.architecture"] == ("qwen3" if cfg.qk_norm else "llama")

    ids, _ = encode_chat(bpe, MESSAGES, add_generation_prompt=True)
    ids = ids + bpe.encode(" Once upon a time, Lily flew her red kite over the hill, and then")
    assert len(ids) > 100  # past YaRN's original context of 48
    with torch.no_grad():
        expected = ours(torch.tensor([ids])).logits[0].numpy()
    diff = np.abs(llama_logits(llm, ids) - expected).max()
    assert diff <= TOLERANCE[dtype], f"max |logit difference| {diff:.2e}"

    stops = [bpe.token_to_id(IM_END), bpe.token_to_id(ENDOFTEXT)]
    prompt = ids[:60]
    mine = generate(ours, prompt, 24, temperature=0.0, stop_tokens=stops)[0]
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if token in stops or len(theirs) == 24:
            break
        theirs.append(token)
    assert len(set(mine)) > 4
    if dtype != "q8_0":  # f32 / f16: the same greedy tokens and text
        assert theirs == mine
        assert llm.detokenize(theirs).decode(errors="replace") == bpe.decode(mine)  # a random model: stray bytes
    else:  # 8-bit weights flip near ties, and the texts part there: each token llama.cpp picks is one that our
        # model, fed the same text, rates within the Q8_0 tolerance of its best
        with torch.no_grad():
            steps = ours(torch.tensor([prompt + theirs])).logits[0, len(prompt) - 1: -1]
        chosen = steps.gather(1, torch.tensor(theirs).view(-1, 1)).view(-1)
        assert theirs and (steps.max(dim=1).values - chosen).max().item() <= TOLERANCE["q8_0"]


def test_llama_cpp_tokenizes_and_chats_like_us(bpe, tmp_path, llama):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    cfg = get_preset("nano", vocab_size=bpe.vocab_size, max_seq_len=256)
    model = random_model(cfg)
    save_checkpoint(tmp_path / "ckpt", model, bpe)
    export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32")
    llm = llama(tmp_path / "m.gguf", 256)
    for text in TEXTS:
        ids = bpe.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        # special=False: the text of a special token is plain bytes, like our allow_special=False
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == bpe.encode(text, allow_special=False), text
        assert llm.detokenize(ids, special=True).decode() == text
    assert llm.token_eos() == bpe.token_to_id(IM_END)
    # the chat template in the file renders our ChatML, and its ids are encode_chat's (for these messages)
    template = llm.metadata["tokenizer.chat_template"]
    rendered = Jinja2ChatFormatter(template=template, eos_token=IM_END, bos_token=ENDOFTEXT,
                                   add_generation_prompt=True)(messages=MESSAGES).prompt
    assert rendered == render_chat(MESSAGES, add_generation_prompt=True)
    prompt = encode_chat(bpe, MESSAGES, add_generation_prompt=True)[0]
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == prompt

    # llama-cpp-python's own chat path: it picks the file's template, adds no BOS, and replies what we reply
    reply = llm.create_chat_completion(MESSAGES, temperature=0.0, max_tokens=16)
    assert llm.chat_format == "chat_template.default" and reply["usage"]["prompt_tokens"] == len(prompt)
    mine = generate(model, prompt, 16, temperature=0.0, stop_tokens=[bpe.token_to_id(IM_END)])[0]
    # it drops the stray bytes of a random model's reply (we print U+FFFD) and may finish a character with one
    # more token
    text = bpe.decode(mine).replace("\ufffd", "")
    assert reply["choices"][0]["message"]["content"].startswith(text) and len(text) > 10, (reply, text)


@pytest.fixture(scope="module")
def llama_vocab(bpe, tmp_path_factory):
    """llama.cpp's tokenizer of our exported file (the vocabulary alone: no weights are loaded)."""
    llama_cpp = require_llama_cpp()
    folder = tmp_path_factory.mktemp("vocab")
    save_checkpoint(folder / "ckpt", MiniMindLM(get_preset("nano", vocab_size=bpe.vocab_size)), bpe)
    export_gguf(folder / "ckpt", folder / "m.gguf")
    return llama_cpp.Llama(model_path=str(folder / "m.gguf"), vocab_only=True, verbose=False)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
                                st.sampled_from([ENDOFTEXT, IM_START, IM_END, "'s", "'LL", "  ", "\n\n", "123456"])),
                      max_size=8))
def test_llama_cpp_splits_any_text_like_our_byte_level_bpe(bpe, llama_vocab, parts):
    """The "gpt-2" pre-tokenizer is our ByteLevel regex: any Unicode text gives our ids, special tokens included
    (20,000 random texts of random code points measured: no difference)."""
    text = "".join(parts)
    assert llama_vocab.tokenize(text.encode(), add_bos=False, special=True) == bpe.encode(text)
