"""Hugging Face hub checkpoints in and out: strict lazy loading, FP8 dequantization, hub-layout export."""

from mimo.checkpoint.export import save_pretrained
from mimo.checkpoint.generation import GenerationConfig
from mimo.checkpoint.loader import load_pretrained
from mimo.checkpoint.pretrained import MiMoForCausalLM

__all__ = ["GenerationConfig", "MiMoForCausalLM", "load_pretrained", "save_pretrained"]
