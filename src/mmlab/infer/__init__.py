"""Inference: generation with a KV cache (later: quantization, an OpenAI-compatible server)."""

from mmlab.infer.generate import SamplingParams, generate, generate_steps, sample_next, stream_generate

__all__ = ["SamplingParams", "generate", "generate_steps", "sample_next", "stream_generate"]
