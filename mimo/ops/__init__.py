"""Stateless tensor functions the model is built from (no parameters, no config objects)."""
