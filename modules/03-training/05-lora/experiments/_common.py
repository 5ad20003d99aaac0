"""Shared by the LoRA lesson's experiments: one SFT run (full or LoRA) of the lessons' shared base on the
synthetic tasks, and what it cost."""

from pathlib import Path
from typing import Any

from mmlab.lab.posttrain import curve, lesson_base, stage_config
from mmlab.model.lora import LoRAConfig
from mmlab.train.sft import sft

FULL_LR, LORA_LR = 1e-3, 3e-3  # LoRA's usual rate is several times full fine-tuning's


def run(exp: Any, out: Path, steps: int, lora: LoRAConfig | None, n_gen: int) -> dict[str, Any]:
    """Fine-tune the shared base into ``out``; held-out quality, parameter counts, optimizer-state bytes
    (AdamW keeps two fp32 numbers per trainable parameter), wall time and checkpoint file sizes."""
    r = sft(lesson_base(exp), "synthetic-tasks", stage_config(exp, out, steps, LORA_LR if lora else FULL_LR),
            lora=lora, n_generate=n_gen, n_synthetic=exp.pick(20_000, 4000, 200))
    ckpt = out / "ckpt"
    files = {p.name: p.stat().st_size for p in ckpt.glob("*.safetensors")}
    return {"trainable_params": r.trainable, "total_params": r.total, "optimizer_state_bytes": 8 * r.trainable,
            "train_s": r.result.elapsed_s, "answer_loss": r.after["answer_loss"],
            "exact_match": r.after["exact_match"], "rouge_l": r.after["rouge_l"],
            "before_answer_loss": r.before["answer_loss"], "val_curve": curve(out),
            "adapter_file_bytes": files.get("adapter.safetensors"), "model_file_bytes": files.get("model.safetensors")}
