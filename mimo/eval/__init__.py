"""Evaluation: perplexity, bits per byte, MTP acceptance."""
