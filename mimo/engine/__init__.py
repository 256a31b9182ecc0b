"""Inference engine: KV cache, scheduler, sampling loop, MTP speculative decoding; vLLM-shaped API."""
