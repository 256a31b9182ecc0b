"""Training: data pipeline, losses (next-token + MTP), optimiser, trainer loop, distillation."""
