"""Checkpoints: a folder with the model, its config, its tokenizer and (optionally) the trainer state.

    ckpt/
      model.safetensors   weights (a tied LM head is stored once; no `_orig_mod.` / `module.` prefixes)
      config.json         ModelConfig
      tokenizer.json | char_vocab.json
      trainer_state.pt    optimizer, step, RNG states, data generator (what resume needs)
      quant_config.json   a quantized model only (`mmlab quantize`): bits, group size, which layers; the
                          int weights and their scales are in model.safetensors (inference only)
      adapter.safetensors, adapter_config.json
                          a LoRA run only: the adapter; model.safetensors then holds the frozen base
                          weights under their usual names, so the base is never duplicated or altered

Writing is atomic: everything goes to a temporary sibling folder, which then replaces the old
checkpoint by two renames. A crash at any moment leaves either the old or the new checkpoint whole
(``ckpt.old`` is picked up if the crash fell between the renames).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from mmlab.config import ModelConfig
from mmlab.errors import MMLabError
from mmlab.model.lm import MiniMindLM
from mmlab.model.lora import ADAPTER_CONFIG, apply_lora, load_adapter, lora_layers, read_adapter_config, save_adapter
from mmlab.tokenizer.base import Tokenizer, load_tokenizer

MODEL_FILE, CONFIG_FILE, STATE_FILE = "model.safetensors", "config.json", "trainer_state.pt"
QUANT_CONFIG = "quant_config.json"  # the quantized checkpoints of mmlab.infer.quant (`mmlab quantize`)


class CheckpointError(MMLabError):
    """A checkpoint is missing, incomplete, or does not fit the model it is loaded into."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | Path,
    model: MiniMindLM,
    tokenizer: Tokenizer | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (see module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint is an ordinary folder
    try:
        if any(True for _ in lora_layers(model)):
            _save_base_and_adapter(model, tmp)
        else:
            save_model(model, str(tmp / MODEL_FILE))
        if getattr(model, "quant_config", None) is not None:  # a quantized model (mmlab.infer.quant)
            model.quant_config.to_json(tmp / QUANT_CONFIG)
        model.cfg.to_json(tmp / CONFIG_FILE)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = path.with_name(path.name + ".old")
        if path.exists():  # keep the current checkpoint as .old until the new one is in place
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _base_name(name: str) -> str:
    return name.replace(".base.", ".")


def _save_base_and_adapter(model: MiniMindLM, folder: Path) -> None:
    from safetensors.torch import save_file

    merged = [layer for _, layer in lora_layers(model) if layer.merged]
    for layer in merged:  # the base weights are saved as they were, the update apart
        layer.unmerge()
    try:
        state = {_base_name(k): v.detach().contiguous() for k, v in model.state_dict().items() if ".lora_" not in k}
        # modules trained in full: the base keeps their values from before training; the adapter has the new ones
        for name, original in getattr(model, "lora_base_copies", {}).items():
            state[_base_name(name)] = original.contiguous()
        if model.cfg.tie_embeddings:
            state.pop("lm_head.weight", None)  # one copy of the tied matrix (restored on load)
        save_file(state, str(folder / MODEL_FILE))
        save_adapter(model, folder)
    finally:
        for layer in merged:
            layer.merge()


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder at ``path``: a checkpoint itself, or a run folder holding ``ckpt/``."""
    path = Path(path)
    for candidate in (path, path / "ckpt", path.with_name(path.name + ".old"), path / "ckpt.old"):
        if (candidate / MODEL_FILE).is_file() and (candidate / CONFIG_FILE).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path}: not a checkpoint (no {MODEL_FILE} and {CONFIG_FILE} here or in {path}/ckpt)")


def load_model(path: str | Path, device: str | torch.device = "cpu", merge_adapter: bool = True) -> MiniMindLM:
    """The model of a checkpoint, built from its own config.json. A LoRA checkpoint's adapter is applied
    and, with ``merge_adapter``, merged into plain linear layers (a model like any other)."""
    from mmlab.model.lora import remove_lora

    folder = resolve_checkpoint(path)
    cfg = ModelConfig.from_json(folder / CONFIG_FILE)
    model = MiniMindLM(cfg)
    if (folder / QUANT_CONFIG).is_file():  # int8 / int4 weights: build the QuantLinear layers they fill
        from mmlab.infer.quant import QuantConfig, apply_quant_config

        try:
            apply_quant_config(model, QuantConfig.from_json(folder / QUANT_CONFIG))
        except MMLabError as e:
            raise CheckpointError(str(e)) from None
    load_weights(model, folder)
    if merge_adapter and any(True for _ in lora_layers(model)):
        remove_lora(model, merge=True)
    return model.to(device)


def load_weights(model: MiniMindLM, path: str | Path) -> None:
    """Load a checkpoint's weights into ``model``; a config mismatch names the differing fields."""
    folder = resolve_checkpoint(path)
    saved = ModelConfig.from_json(folder / CONFIG_FILE)
    if saved != model.cfg:
        diffs = [f"{k}: checkpoint {v!r} vs model {getattr(model.cfg, k)!r}"
                 for k, v in saved.to_dict().items() if k != "name" and v != model.cfg.to_dict()[k]]
        raise CheckpointError(f"{folder} was saved with another config ({'; '.join(diffs)})")
    if (folder / QUANT_CONFIG).is_file() and getattr(model, "quant_config", None) is None:
        raise CheckpointError(f"{folder} holds a quantized model (inference only): load it with load_model or "
                              "`mmlab sample`; train from the full-precision checkpoint it came from")
    try:
        state = load_file(str(folder / MODEL_FILE))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{folder / MODEL_FILE}: cannot read weights ({e})") from None
    if model.cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("tok_emb.weight"))
        state.setdefault("tok_emb.weight", state.get("lm_head.weight"))
    has_adapter = (folder / ADAPTER_CONFIG).is_file()
    if has_adapter and not any(True for _ in lora_layers(model)):
        apply_lora(model, read_adapter_config(folder))  # a LoRA checkpoint into a plain model
    if any(True for _ in lora_layers(model)):
        if not has_adapter:
            raise CheckpointError(f"{folder}: the model has LoRA layers but the checkpoint has no adapter")
        if read_adapter_config(folder) != model.lora_config:
            raise CheckpointError(f"{folder}: adapter config {read_adapter_config(folder)} differs from the "
                                  f"model's {model.lora_config}")
        own = {_base_name(k): k for k in model.state_dict() if ".lora_" not in k}
        state = {own.get(k, k): v for k, v in state.items()}
    own_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} (model {own_shapes[k]})" for k, v in state.items()
             if k in own_shapes and tuple(v.shape) != own_shapes[k]]
    if wrong:  # e.g. a quant_config.json that does not describe the int tensors beside it
        raise CheckpointError(f"{folder / MODEL_FILE}: tensors of the wrong shape: {', '.join(wrong[:4])}"
                              f"{f' and {len(wrong) - 4} more' if len(wrong) > 4 else ''}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".lora_" not in k]
    if missing or unexpected:
        raise CheckpointError(f"{folder / MODEL_FILE}: missing tensors {missing}, unexpected tensors {unexpected}")
    if has_adapter:
        try:
            load_adapter(model, folder, apply=False)
        except MMLabError as e:
            raise CheckpointError(str(e)) from None


def load_checkpoint_tokenizer(path: str | Path) -> Tokenizer:
    return load_tokenizer(resolve_checkpoint(path))


def pretraining_corpus(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """The text corpus a checkpoint was (pre)trained on, as its trainer state records it: ``({"data", "seed",
    "val_fraction", "block_size", "sha256"}, "")``, or ``(None, why)``. SFT, DPO and GRPO checkpoints record
    conversations or prompts, not a text corpus, so they give None: held-out perplexity needs ``--data``."""
    folder = resolve_checkpoint(path)
    if not (folder / STATE_FILE).is_file():
        return None, "the checkpoint has no trainer state, so no record of its corpus"
    try:
        state = load_trainer_state(folder)
    except CheckpointError as e:
        return None, str(e)
    extra, train_cfg = state.get("extra") or {}, state.get("train_config") or {}
    if extra.get("data") is None or extra.get("stage") not in (None, "distill"):
        stage = extra.get("stage")
        return None, f"the checkpoint records no text corpus{f' (it is a {stage} checkpoint)' if stage else ''}"
    return {"data": extra["data"], "seed": train_cfg.get("seed", 0), "val_fraction": train_cfg.get("val_fraction", 0.1),
            "block_size": train_cfg.get("block_size"), "sha256": extra.get("corpus_sha256")}, ""


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    folder = resolve_checkpoint(path)
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder}: no {STATE_FILE}, so this checkpoint cannot be resumed")
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError / ValueError / EOFError / UnpicklingError
        raise CheckpointError(f"{folder / STATE_FILE}: cannot read trainer state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{folder / STATE_FILE}: not a trainer state")
    return state
