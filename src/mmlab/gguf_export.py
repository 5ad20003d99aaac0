"""GGUF export: an mmlab checkpoint -> one ``.gguf`` file for llama.cpp and the tools built on it (ollama, ...).

    mmlab export gguf --ckpt runs/sft --out tiny-chat.gguf --type q8_0
    $ llama-cli -m tiny-chat.gguf -cnv            # llama.cpp: chat with the ChatML template stored in the file
    >>> from llama_cpp import Llama                # llama-cpp-python (what the tests run)
    >>> Llama(model_path="tiny-chat.gguf").create_chat_completion([{"role": "user", "content": "Hi"}])
    $ echo "FROM ./tiny-chat.gguf" > Modelfile && ollama create tiny-chat -f Modelfile   # ollama (not tested here)

The file is written with the ``gguf`` package (llama.cpp's own Python writer), not with llama.cpp's
``convert_hf_to_gguf.py``: that script identifies a BPE pre-tokenizer by hashing how it splits a fixed
text and refuses any tokenizer it has not seen, which is every tokenizer a learner trains. We know ours:
a GPT-2-style byte-level BPE, whose split regex is llama.cpp's "gpt-2" pre-tokenizer.

What the file holds:

    metadata   architecture "llama" (or "qwen3" for a model with qk_norm): context, widths, layers, heads
               (GQA), RoPE base and scaling,
               the RMSNorm epsilon; the tokenizer (tokens in id order, token types, merges, special ids)
               and the ChatML chat template of ``mmlab export hf``
    tensors    token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
               ffn_up, ffn_down} (qwen3: and attn_q_norm, attn_k_norm), output_norm, and output unless the
               LM head is tied to the embeddings
               (llama.cpp then uses token_embd for both). Matrices in f32, f16 or Q8_0; norm gains in f32.

RoPE pairs: our model rotates the pair (i, i + d/2) of each head ("rotate half", Hugging Face's layout),
llama.cpp's llama architecture rotates (2i, 2i + 1). Both are the same rotation once the rows of W_q and
W_k are reordered so that row i + d/2 sits next to row i; ``interleave_rope_rows`` does that (it is the
``permute`` of convert_hf_to_gguf.py). A model with qk_norm is written as llama.cpp's "qwen3", which
rotates halves like we do: its rows stay as they are (see ``ARCHS``). Mixtures of experts (Qwen3-MoE) are
not written yet: llama.cpp stores the experts of a layer as one 3-D tensor per projection.

Known llama.cpp problem: on a Xeon with AMX, a llama.cpp compiled with -march=native (llama-cpp-python's default
build) moves Q8_0 matrices into its AMX kernels and segfaults on any prompt of more than one token
(llama-cpp-python 0.3.36). f32 and f16 files run; for Q8_0, build it without AMX:

    CMAKE_ARGS='-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
                "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"' pip install llama-cpp-python
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlab.config import ModelConfig
from mmlab.errors import MMLabError
from mmlab.hf_export import CHAT_TEMPLATE, ExportError
from mmlab.model.hf import hf_incompatibilities
from mmlab.tokenizer.base import ENDOFTEXT, IM_END, IM_START
from mmlab.tokenizer.bpe import BPETokenizer

GGUF_TYPES = ("f32", "f16", "q8_0")
GGUF_PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for GPT-2's split regex, the one `tokenizers`' ByteLevel uses
Q8_0_BLOCK = 32  # Q8_0 stores rows in blocks of 32 weights (one f16 scale each): rows must be a multiple of it
INSTALL_HINT = 'pip install "minimind-lab[gguf]"'


@dataclass(frozen=True)
class GGUFArch:
    """How one llama.cpp architecture names and lays out our tensors.

    interleaved_rope: llama.cpp rotates pairs (2i, 2i+1) for this architecture, so the rows of W_q and W_k
    are reordered from our (i, i + d/2) pairs; False for architectures that rotate halves (NEOX style).
    """

    name: str
    interleaved_rope: bool


ARCHS = {
    "llama": GGUFArch("llama", interleaved_rope=True),
    "qwen3": GGUFArch("qwen3", interleaved_rope=False),  # qk_norm: the Llama tensors + attn_q_norm / attn_k_norm
}

# mmlab name inside a block -> GGUF name inside blk.N
_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.o_proj.weight": "attn_output.weight",
    "attn.q_norm.weight": "attn_q_norm.weight",  # Qwen3 (qk_norm): RMSNorm gains over head_dim
    "attn.k_norm.weight": "attn_k_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.gate_proj.weight": "ffn_gate.weight",
    "ffn.up_proj.weight": "ffn_up.weight",
    "ffn.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {"tok_emb.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise MMLabError(f"the GGUF export needs the `gguf` package: {INSTALL_HINT}") from None
    return gguf


def gguf_arch(cfg: ModelConfig, where: str | Path = "the checkpoint") -> GGUFArch:
    """The llama.cpp architecture ``cfg`` is written as: "llama", or "qwen3" with qk_norm (ExportError naming
    the switches that keep it from being one)."""
    if cfg.n_experts:
        raise ExportError(f"{where} is a mixture of experts (n_experts={cfg.n_experts}): the GGUF export writes "
                          "dense Llama and Qwen3 models only, so far (mmlab export hf writes a Qwen3-MoE)")
    arch = ARCHS["qwen3" if cfg.qk_norm else "llama"]
    s = cfg.rope_scaling
    ntk = s is not None and s.kind == "ntk"  # exact in GGUF as a larger base (transformers has no place for it)
    problems = hf_incompatibilities(cfg.replace(rope_scaling=None) if ntk else cfg)
    if s is not None and s.kind == "yarn" and (s.beta_fast, s.beta_slow) != (32.0, 1.0):
        problems.append(f"rope_scaling beta_fast={s.beta_fast}, beta_slow={s.beta_slow} (llama.cpp reads no "
                        "YaRN betas for these architectures and uses 32 and 1)")
    if problems:
        raise ExportError(f"{where} cannot be exported as a GGUF {arch.name}: {'; '.join(problems)}")
    return arch


def interleave_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of W_q or W_k, (n_heads * d, C), head by head from the "rotate half" pairing
    (row i with row i + d/2) to the interleaved one (row 2i with row 2i + 1) that llama.cpp's llama rotates."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig, arch: GGUFArch) -> dict[str, torch.Tensor]:
    """Our state dict under GGUF names, in the layout ``arch`` expects (a tied LM head once, as token_embd)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            new = f"blk.{i}.{_LAYER_NAMES[rest]}"
            if arch.interleaved_rope and rest == "attn.q_proj.weight":
                tensor = interleave_rope_rows(tensor, cfg.n_heads)
            elif arch.interleaved_rope and rest == "attn.k_proj.weight":
                tensor = interleave_rope_rows(tensor, cfg.kv_heads)
            out[new] = tensor
        else:
            out[_TOP_NAMES[name]] = tensor
    if cfg.tie_embeddings:
        out.pop("output.weight", None)
    return out


def gguf_vocab(tok: BPETokenizer, vocab_size: int, where: str | Path) -> dict[str, Any]:
    """Tokens in id order, their types, the merges and the special ids, as GGUF's tokenizer.ggml.* keys want
    them. Ids the model has beyond the tokenizer's (a padded embedding) become unused "[PAD{id}]" tokens."""
    gguf = _import_gguf()
    data = json.loads(tok.to_json())
    if tok.tiktoken_spec() is None:  # not a plain GPT-2 byte-level BPE: llama.cpp's "gpt-2" would split differently
        pre = (data.get("pre_tokenizer") or {}).get("type")
        raise ExportError(f"{where}/tokenizer.json is not a plain GPT-2-style byte-level BPE (normalizer "
                          f"{(data.get('normalizer') or {}).get('type')}, pre-tokenizer {pre}): llama.cpp's "
                          f"'{GGUF_PRE_TOKENIZER}' pre-tokenizer would not split text like it does")
    vocab = tok.hf.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    n = len(by_id)
    if sorted(by_id) != list(range(n)):
        raise ExportError(f"{where}/tokenizer.json: token ids are not 0..{n - 1} without gaps")
    if n > vocab_size:
        raise ExportError(f"{where}: the tokenizer has {n} tokens but the model only {vocab_size} embeddings")
    added = tok.hf.get_added_tokens_decoder()
    types = [(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED) if i in added
             else gguf.TokenType.NORMAL for i in range(n)]
    tokens = [by_id[i] for i in range(n)]
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
    types += [gguf.TokenType.UNUSED] * (vocab_size - n)
    # tokenizers >= 0.20 saves a merge as a pair ["a", "b"], earlier ones as the string "a b"; GGUF wants "a b"
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    ids = {s: tok.token_to_id(s) for s in (ENDOFTEXT, IM_START, IM_END)}
    return {"tokens": tokens, "types": types, "merges": merges, "ids": ids}


def _quantize(tensor: torch.Tensor, dtype: str, gguf) -> tuple[np.ndarray, Any, str]:
    """(data, raw GGML type or None, what it became) for one tensor: vectors stay f32, matrices take ``dtype``;
    Q8_0 needs rows of a multiple of 32 and falls back to f16 (as convert_hf_to_gguf.py does)."""
    a = tensor.detach().float().cpu().contiguous().numpy()
    if a.ndim == 1 or dtype == "f32":
        return a, None, "f32"
    if dtype == "q8_0" and a.shape[-1] % Q8_0_BLOCK == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(a, q), q, "q8_0"
    return a.astype(np.float16), None, "f16"


def export_gguf(ckpt: str | Path, out: str | Path, *, dtype: str = "f16", overwrite: bool = False) -> dict[str, Any]:
    """Write the checkpoint ``ckpt`` (a LoRA adapter merged in) as one GGUF file ``out`` with ``dtype``
    matrices: "f32", "f16" or "q8_0".

    Returns {"out", "bytes", "tensors", "type", "arch", "tensor_types" ({type: count}), "notes"}.
    """
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, resolve_checkpoint

    if dtype not in GGUF_TYPES:
        raise ExportError(f"--type {dtype!r} is not one of {', '.join(GGUF_TYPES)}")
    gguf = _import_gguf()
    folder = resolve_checkpoint(ckpt)
    cfg = ModelConfig.from_json(folder / "config.json")
    arch = gguf_arch(cfg, folder)
    if (folder / "quant_config.json").is_file():
        raise ExportError(f"{folder} is quantized (int weights and scales): export the full-precision checkpoint "
                          "it came from (--type q8_0 quantizes for llama.cpp)")
    try:
        tok = load_checkpoint_tokenizer(folder)
    except MMLabError as e:
        raise ExportError(f"{folder}: no tokenizer to export ({e}); a GGUF file needs its vocabulary") from None
    if not isinstance(tok, BPETokenizer):
        raise ExportError(f"{folder} has a {type(tok).__name__}: the GGUF export needs a byte-level BPE tokenizer "
                          "(tokenizer.json; train with --tokenizer bpe), llama.cpp has no character tokenizer")
    out = Path(out)
    _check_out_file(out, overwrite)
    vocab = gguf_vocab(tok, cfg.vocab_size, folder)
    notes: list[str] = []
    if (folder / "adapter_config.json").is_file():
        notes.append("the LoRA adapter is merged into the exported weights")
    model = load_model(folder)
    tensors = gguf_tensors(model.state_dict(), cfg, arch)

    def write(path: Path) -> dict[str, int]:
        w = gguf.GGUFWriter(str(path), arch.name)
        _write_metadata(w, gguf, cfg, arch, vocab, dtype, notes)
        counts: dict[str, int] = {}
        fell_back = []
        for name, tensor in tensors.items():
            data, raw, kind = _quantize(tensor, dtype, gguf)
            if raw is None:
                w.add_tensor(name, data)
            else:
                w.add_tensor(name, data, raw_dtype=raw)
            counts[kind] = counts.get(kind, 0) + 1
            if dtype == "q8_0" and data.ndim == 2 and kind == "f16":
                fell_back.append(name)
        if fell_back:
            notes.append(f"{len(fell_back)} matrices stay f16: their rows are not a multiple of {Q8_0_BLOCK} "
                         f"({', '.join(fell_back[:3])}{', ...' if len(fell_back) > 3 else ''})")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return counts

    counts = _write_file(out, write)
    return {"out": str(out), "bytes": out.stat().st_size, "tensors": len(tensors), "type": dtype,
            "arch": arch.name, "tensor_types": counts, "notes": notes}


def _write_metadata(w, gguf, cfg: ModelConfig, arch: GGUFArch, vocab: dict[str, Any], dtype: str,
                    notes: list[str]) -> None:
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_name(cfg.name)
    w.add_file_type(file_types[dtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.resolved_ffn_size)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    s = cfg.rope_scaling
    if s is not None and s.kind == "ntk":
        # NTK-aware scaling only raises the base: theta * factor^(d / (d - 2)) is the same RoPE, exactly
        w.add_rope_freq_base(cfg.rope_theta * s.factor ** (cfg.head_dim / (cfg.head_dim - 2)))
    else:
        w.add_rope_freq_base(cfg.rope_theta)
    if s is not None and s.kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s.factor)
    elif s is not None and s.kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(s.factor)
        w.add_rope_scaling_orig_ctx_len(s.original_max_seq_len)
        w.add_rope_scaling_yarn_beta_fast(s.beta_fast)
        w.add_rope_scaling_yarn_beta_slow(s.beta_slow)

    # tokenizer: GPT-2-style byte-level BPE; mmlab puts no BOS in front of a text
    ids = vocab["ids"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    eos = ids[IM_END] if ids[IM_END] is not None else ids[ENDOFTEXT]
    if ids[ENDOFTEXT] is not None:
        # llama.cpp's gpt2 vocab defaults BOS to id 11 (a byte here): name a real special token instead
        w.add_bos_token_id(ids[ENDOFTEXT])
        w.add_pad_token_id(ids[ENDOFTEXT])
    if eos is not None:
        w.add_eos_token_id(eos)
    if ids[IM_END] is not None:
        w.add_eot_token_id(ids[IM_END])
    if ids[IM_START] is not None and ids[IM_END] is not None:
        w.add_chat_template(CHAT_TEMPLATE)
    else:
        notes.append(f"the tokenizer has no {IM_START} / {IM_END} tokens: no chat template exported")


# ---- the output file ----------------------------------------------------------------------------
def _check_out_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / 'model.gguf'}")
    if out.exists() and not overwrite:
        raise ExportError(f"--out {out} already exists; pass --overwrite to replace it, or choose another file")


def _write_file(out: Path, write: Callable[[Path], Any]) -> Any:
    """Write into a temporary sibling file, then rename it over ``out``: a failure never leaves a half-written
    file (or destroys the previous one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a finished export gets the usual permissions
    try:
        result = write(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return result
