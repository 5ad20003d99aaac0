"""Hugging Face export and import: an mmlab checkpoint <-> a folder that `transformers` loads as a Llama
(or, with ``qk_norm`` on, as a Qwen3; with routed experts too, as a Qwen3-MoE).

    mmlab export hf --ckpt runs/sft --out hf/tiny-chat
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> model = AutoModelForCausalLM.from_pretrained("hf/tiny-chat")
    >>> tok = AutoTokenizer.from_pretrained("hf/tiny-chat")
    >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    mmlab import hf --hf hf/tiny-chat --out runs/imported
    mmlab import hf --hf MiniMind2 --out runs/minimind2    # a MiniMind2 release folder (model_type "minimind")

With the Llama switches our model *is* a Llama (``model/hf.py`` renames the tensors and maps the config),
so the export is a rename plus the files ``transformers`` expects:

    config.json              a LlamaConfig (Qwen3Config, Qwen3MoeConfig: ``model/hf.py hf_architecture``), plus
                             "mmlab_config" (our ModelConfig) so that an import restores fields those have no
                             place for (dropout, init, the preset's name) exactly
    model.safetensors        the weights under Llama's / Qwen3's names (experts one matrix each, as on the hub);
                             a tied LM head is stored once
    generation_config.json   stop on <|im_end|> (end of a chat turn) and <|endoftext|> (end of a document)
    tokenizer.json           byte-level BPE: our own file, unchanged (it *is* a `tokenizers` file);
                             characters: a `tokenizers` WordLevel model over single characters
    tokenizer_config.json    PreTrainedTokenizerFast, the special tokens, and the ChatML chat template

``apply_chat_template`` renders the conversation and encodes it in one piece, while ``encode_chat`` encodes
each piece apart and reads message text as text; the ids agree except for two edge cases: a message whose
text contains a special token's text ("<|im_end|>" typed by a user becomes the control token in
transformers), and a message that starts with blank lines (a merge can then cross the piece boundary).

MiniMind2's own folders (``MiniMindForCausalLM``: config.json with model_type "minimind", weights in
``model.safetensors`` or ``pytorch_model.bin``, its tokenizer.json) import too: the dense model is a Llama
under the same names, the MoE layers are renamed, and a null ``intermediate_size`` is MiniMind's own rule.

Neither direction imports ``transformers``: the files are written and read directly, and the tests check
that ``transformers`` loads them and computes the same logits and greedy text.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmlab.config import ModelConfig
from mmlab.errors import ConfigError, MMLabError
from mmlab.model.hf import (
    from_hf_state_dict,
    from_llama_config_dict,
    from_minimind_config_dict,
    from_minimind_state_dict,
    hf_architecture,
    hf_incompatibilities,
    to_hf_config_dict,
    to_hf_state_dict,
)
from mmlab.model.lm import MiniMindLM
from mmlab.tokenizer.base import BPE_FILE, ENDOFTEXT, IM_END, IM_START, Tokenizer
from mmlab.tokenizer.bpe import BPETokenizer
from mmlab.tokenizer.char import UNK, CharTokenizer
from mmlab.tokenizer.chat import CHAT_TEMPLATE  # the Jinja twin of render_chat (re-exported for callers)

HF_CONFIG, HF_WEIGHTS, HF_INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
MINIMIND_TYPES = ("minimind",)  # MiniMind2's MiniMindConfig.model_type
HF_TYPES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
TOKENIZER_CONFIG, GENERATION_CONFIG = "tokenizer_config.json", "generation_config.json"
MMLAB_KEY = "mmlab_config"
CHAR_SPLIT = r"[\s\S]"  # one pre-token per Unicode code point, newlines included: a char tokenizer

class ExportError(MMLabError):
    """A checkpoint that cannot be exported, or a Hugging Face folder that cannot be imported."""


# ---- export -------------------------------------------------------------------------------------
def char_to_hf_tokenizer(tok: CharTokenizer):
    """A `tokenizers.Tokenizer` that encodes and decodes exactly like ``tok`` (same ids): every code point
    is a pre-token, a WordLevel model maps it to its id, special tokens are added tokens with their ids,
    and the Fuse decoder joins tokens without spaces."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    # unknown characters: "replace" maps them to <unk>; "error" and "skip" have no <unk> in the vocabulary,
    # so `tokenizers` refuses them (for "skip" that differs from mmlab, which drops them: see export_hf's notes)
    hf = HFTokenizer(models.WordLevel(vocab=dict(tok.stoi), unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(CHAR_SPLIT), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    return hf


def hf_tokenizer_files(tok: Tokenizer, max_len: int) -> tuple[dict[str, str], list[str]]:
    """{file name: text} of the tokenizer files for ``tok``, and notes on what could not be exported."""
    notes: list[str] = []
    if isinstance(tok, BPETokenizer):
        tokenizer_json = tok.to_json()
    elif isinstance(tok, CharTokenizer):
        tokenizer_json = char_to_hf_tokenizer(tok).to_str()
        if tok.unk == "skip":
            notes.append("the char tokenizer drops unknown characters (unk='skip'); the exported tokenizer.json "
                         "refuses them instead (tokenizers has no 'skip')")
    else:
        kind = type(tok).__name__
        return {}, [f"the {kind} tokenizer is not exported (only byte-level BPE and char tokenizers are): "
                    "the folder holds the model alone, and AutoTokenizer will not load it"]
    ids = {s: tok.token_to_id(s) for s in (ENDOFTEXT, IM_START, IM_END)}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "bos_token": None,  # mmlab puts no BOS in front of a text
        "eos_token": IM_END if ids[IM_END] is not None else (ENDOFTEXT if ids[ENDOFTEXT] is not None else None),
        "pad_token": ENDOFTEXT if ids[ENDOFTEXT] is not None else None,
        "unk_token": UNK if tok.token_to_id(UNK) is not None else None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
    }
    if isinstance(tok, CharTokenizer):
        config["mmlab_char_unk"] = tok.unk  # restores the unknown-character policy on import
    if ids[IM_START] is not None and ids[IM_END] is not None:
        config["chat_template"] = CHAT_TEMPLATE
    else:
        notes.append(f"the tokenizer has no {IM_START} / {IM_END} tokens: no chat template exported")
    return {BPE_FILE: tokenizer_json, TOKENIZER_CONFIG: json.dumps(config, indent=2) + "\n"}, notes


def hf_config(cfg: ModelConfig, tok: Tokenizer | None) -> dict[str, Any]:
    """config.json of LlamaForCausalLM (or Qwen3's, Qwen3-MoE's) for ``cfg`` (ConfigError naming the switches
    that keep it from being one)."""
    ids = {s: (tok.token_to_id(s) if tok is not None else None) for s in (ENDOFTEXT, IM_END)}
    arch = hf_architecture(cfg)
    return {
        "architectures": [HF_TYPES[arch]],
        "model_type": arch,
        **to_hf_config_dict(cfg),
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": ids[IM_END] if ids[IM_END] is not None else ids[ENDOFTEXT],
        "pad_token_id": ids[ENDOFTEXT],
        "use_cache": True,
        MMLAB_KEY: cfg.to_dict(),
    }


def export_hf(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the checkpoint ``ckpt`` (a LoRA adapter merged in) as a Hugging Face Llama (Qwen3, Qwen3-MoE)
    folder ``out``.

    Returns {"out", "files", "notes"}; notes say what was not exported (e.g. a tokenizer kind).
    """
    from mmlab.train.checkpoint import load_checkpoint_tokenizer, load_model, resolve_checkpoint

    folder = resolve_checkpoint(ckpt)
    cfg = ModelConfig.from_json(folder / "config.json")
    problems = hf_incompatibilities(cfg)
    if problems:
        name = {"llama": "a Llama", "qwen3": "a Qwen3", "qwen3_moe": "a Qwen3-MoE"}[hf_architecture(cfg)]
        raise ExportError(f"{folder} cannot be exported as {name}: {'; '.join(problems)}")
    if (folder / "quant_config.json").is_file():
        raise ExportError(f"{folder} is quantized (int weights and scales): export the full-precision checkpoint "
                          "it came from")
    out = Path(out)
    _check_out(out, overwrite, "export")
    model = load_model(folder)
    try:
        tok: Tokenizer | None = load_checkpoint_tokenizer(folder)
    except MMLabError:
        tok = None
    files, notes = hf_tokenizer_files(tok, cfg.max_seq_len) if tok is not None else ({}, ["no tokenizer in the "
                                                                                         "checkpoint: none exported"])
    if (folder / "adapter_config.json").is_file():
        notes.append("the LoRA adapter is merged into the exported weights")
    state = {k: v.detach().contiguous().clone() for k, v in to_hf_state_dict(model.state_dict(), cfg).items()}
    stops = [i for i in (tok.token_to_id(s) for s in (IM_END, ENDOFTEXT)) if i is not None] if tok else []
    generation = {"eos_token_id": stops or None,
                  "pad_token_id": tok.token_to_id(ENDOFTEXT) if tok is not None else None}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        (tmp / HF_CONFIG).write_text(json.dumps(hf_config(cfg, tok), indent=2) + "\n")
        (tmp / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    _write_folder(out, write)
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "notes": notes}


# ---- import -------------------------------------------------------------------------------------
def read_hf_config(hf_dir: Path) -> ModelConfig:
    """The ModelConfig of a Llama folder: our own stashed config when the Llama fields still agree with it,
    else the one the Llama fields describe."""
    path = hf_dir / HF_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{hf_dir}: no {HF_CONFIG} (not a Hugging Face model folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict) or data.get("model_type") not in (*HF_TYPES, *MINIMIND_TYPES):
        kind = data.get("model_type") if isinstance(data, dict) else None
        raise ExportError(f"{path}: model_type={kind!r}; only Llama, Qwen3 and Qwen3-MoE models (model_type "
                          f"{', '.join(map(repr, HF_TYPES))}) and MiniMind2 models ('minimind') can be imported")
    if data["model_type"] in MINIMIND_TYPES:
        raise ExportError(f"{path}: a MiniMind2 model: import it with import_hf (read_minimind_config)")
    try:
        cfg = from_llama_config_dict(data)
    except ConfigError as e:
        raise ExportError(f"{path}: {e}") from None
    stashed = data.get(MMLAB_KEY)
    if isinstance(stashed, dict):
        try:
            ours = ModelConfig.from_dict(stashed, source=f"{path} ({MMLAB_KEY})")
        except ConfigError:
            return cfg
        # the stash wins only while the architecture it describes is the file's (nobody edited one of them)
        arch = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                "tie_word_embeddings")
        if not hf_incompatibilities(ours) and hf_architecture(ours) == hf_architecture(cfg):
            mine, theirs = to_hf_config_dict(ours), to_hf_config_dict(cfg)
            if all(mine[k] == theirs[k] for k in arch) and mine.get("num_experts") == theirs.get("num_experts"):
                return ours
    return cfg


def _model_type(hf_dir: Path) -> Any:
    try:
        data = json.loads((hf_dir / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # read_hf_config says what is wrong with it
    return data.get("model_type") if isinstance(data, dict) else None


def read_minimind_config(hf_dir: Path, state: dict[str, torch.Tensor]) -> tuple[ModelConfig, list[str]]:
    """The ModelConfig of a MiniMind2 folder (its ``MiniMindConfig`` config.json), and what is not carried
    over. Whether the LM head is tied is read from the weights: MiniMind ties it, and a tied head is saved once
    or as an identical copy."""
    path = hf_dir / HF_CONFIG
    data = json.loads(path.read_text(encoding="utf-8"))
    if any(".q_norm." in k or ".k_norm." in k for k in state):
        raise ExportError(f"{hf_dir}: a MiniMind-3 checkpoint (QK-norm in attention) in MiniMind's own format, whose "
                          "tensor names mmlab does not map yet; its Qwen3-format folders (model_type 'qwen3') and "
                          "MiniMind2 folders import")
    emb, head = state.get("model.embed_tokens.weight"), state.get("lm_head.weight")
    if emb is None and head is not None:  # a tied pair saved once, under the head's name
        emb = state["model.embed_tokens.weight"] = state.pop("lm_head.weight")
        head = None
    if emb is None:
        raise ExportError(f"{hf_dir}: no model.embed_tokens.weight in the weights: not a MiniMind model")
    tied = head is None or (head.shape == emb.shape and torch.equal(head, emb))
    if head is not None and tied:
        del state["lm_head.weight"]
    try:
        return from_minimind_config_dict(data, tied)
    except ConfigError as e:
        raise ExportError(f"{path}: {e}") from None


def read_hf_weights(hf_dir: Path, allow_bin: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s) (one file, or shards listed in the index); with
    ``allow_bin``, a ``pytorch_model.bin`` too (MiniMind's releases), read with ``weights_only=True``: tensors
    only, never code."""
    safetensors = (hf_dir / HF_WEIGHTS).is_file() or (hf_dir / HF_INDEX).is_file()
    if allow_bin and not safetensors and (hf_dir / TORCH_WEIGHTS).is_file():
        try:
            state = torch.load(hf_dir / TORCH_WEIGHTS, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle that is not plain tensors, or a corrupt file
            raise ExportError(f"{hf_dir / TORCH_WEIGHTS}: cannot read weights ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ExportError(f"{hf_dir / TORCH_WEIGHTS}: not a state dict of tensors")
        return state
    if (hf_dir / HF_WEIGHTS).is_file():
        files = [hf_dir / HF_WEIGHTS]
    elif (hf_dir / HF_INDEX).is_file():
        try:
            weight_map = json.loads((hf_dir / HF_INDEX).read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ExportError(f"{hf_dir / HF_INDEX}: cannot read the shard index ({e})") from None
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    else:
        other = [p.name for p in hf_dir.glob("*.bin")]
        hint = f" (found {other[0]}: re-save it with safe_serialization=True)" if other else ""
        raise ExportError(f"{hf_dir}: no {HF_WEIGHTS}; only safetensors weights can be imported{hint}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise ExportError(f"{f}: cannot read weights ({e})") from None
    return state


def read_hf_tokenizer(hf_dir: Path) -> Tokenizer | None:
    """The folder's tokenizer as an mmlab tokenizer: a WordLevel-over-characters file (what we export for a
    char tokenizer) becomes a CharTokenizer again; any other tokenizer.json is used as a `tokenizers` BPE."""
    path = hf_dir / BPE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: a tokenizer file must hold a JSON object, got {type(data).__name__}")
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if not isinstance(model, dict) or not isinstance(pre, dict):
        raise ExportError(f"{path}: 'model' and 'pre_tokenizer' must be JSON objects")
    if model.get("type") == "WordLevel" and (pre.get("pattern") or {}).get("Regex") == CHAR_SPLIT:
        try:
            vocab = model["vocab"]
            specials = [t["content"] for t in sorted(data.get("added_tokens", []), key=lambda t: t["id"])]
            by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        except (KeyError, TypeError, AttributeError) as e:
            raise ExportError(f"{path}: a malformed character vocabulary ({type(e).__name__}: {e})") from None
        chars = [s for s, _ in by_id if s not in specials]
        if [i for _, i in by_id] != list(range(len(by_id))) or any(vocab[c] >= len(chars) for c in chars):
            raise ExportError(f"{path}: a character vocabulary whose ids are not characters then special tokens")
        unk = "error"
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            unk = json.loads((hf_dir / TOKENIZER_CONFIG).read_text()).get("mmlab_char_unk", "error")
        if UNK in specials and unk != "replace":
            unk = "replace"
        return CharTokenizer(chars, specials, unk)
    try:
        return BPETokenizer.load(path)
    except MMLabError as e:  # a file the `tokenizers` library cannot load
        raise ExportError(str(e)) from None


def import_hf(hf_dir: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Read a Hugging Face Llama folder into an mmlab checkpoint folder (config, weights, tokenizer) that
    ``load_model`` loads. Returns {"out", "config", "tokenizer", "notes"}."""
    from mmlab.train.checkpoint import save_checkpoint

    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ExportError(f"Hugging Face folder not found: {hf_dir}")
    out = Path(out)
    _check_out(out, overwrite, "import")
    notes: list[str] = []
    if _model_type(hf_dir) in MINIMIND_TYPES:
        state = {k: v.float() for k, v in read_hf_weights(hf_dir, allow_bin=True).items()}
        cfg, notes = read_minimind_config(hf_dir, state)
        convert = from_minimind_state_dict
    else:
        cfg = read_hf_config(hf_dir)
        state = {k: v.float() for k, v in read_hf_weights(hf_dir).items()}
        convert = from_hf_state_dict
    try:
        ours = convert(state, cfg)
    except ConfigError as e:
        raise ExportError(f"{hf_dir}: {e}") from None
    model = MiniMindLM(cfg)
    own = model.state_dict()
    # shapes first: load_state_dict raises a bare RuntimeError on a size mismatch, even with strict=False
    bad_shapes = [f"{k} {tuple(v.shape)} (config: {tuple(own[k].shape)})" for k, v in ours.items()
                  if k in own and own[k].shape != v.shape]
    missing, unexpected = sorted(set(own) - set(ours)), sorted(set(ours) - set(own))
    if cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected or bad_shapes:
        raise ExportError(f"{hf_dir}: the weights do not fit its config (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, other shapes {bad_shapes[:3]})")
    model.load_state_dict(ours, strict=False)
    tok = read_hf_tokenizer(hf_dir)
    if tok is None:
        notes.append(f"{hf_dir} has no {BPE_FILE}: the checkpoint has no tokenizer")
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise ExportError(f"{hf_dir}: the tokenizer has {tok.vocab_size} tokens but the model only "
                          f"{cfg.vocab_size} embeddings")
    save_checkpoint(out, model, tok)  # atomic: an earlier import in --out is replaced only once this one is whole
    return {"out": str(out), "config": cfg.to_dict(), "tokenizer": type(tok).__name__ if tok else None,
            "notes": notes}


# ---- output folders -----------------------------------------------------------------------------
_OURS = {HF_CONFIG, HF_WEIGHTS, HF_INDEX, TORCH_WEIGHTS, TOKENIZER_CONFIG, GENERATION_CONFIG, BPE_FILE,
         "char_vocab.json", "teaching_bpe.json", "trainer_state.pt", "adapter.safetensors", "adapter_config.json",
         "special_tokens_map.json", "chat_template.jinja"}


def _check_out(out: Path, overwrite: bool, what: str) -> None:
    """Refuse an output folder that holds anything, unless --overwrite and it holds only model files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir())
    if not held:
        return
    if not overwrite:
        raise ExportError(f"--out {out} already holds files ({', '.join(held[:3])}); pass --overwrite to replace "
                          f"an earlier {what}, or choose another folder")
    foreign = [n for n in held if n not in _OURS and not n.startswith(".")]
    if foreign:
        raise ExportError(f"refusing to overwrite {out}: it holds files that are not a model's ({', '.join(foreign)})")


def _write_folder(out: Path, write) -> None:
    """Write into a temporary sibling folder, then swap it in: a failure never leaves a half-written export
    (or destroys the previous one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        write(tmp)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
