"""Post-training (issue #15): verifiable domains, the code sandbox, and the MOPD objective.

* :mod:`mimo.posttrain.sandbox` runs untrusted Python (model answers) in a limited subprocess.
* :mod:`mimo.posttrain.domains` generates the three verifiable domains (tool calls, arithmetic with a
  scratchpad, code with unit tests) with train/held-out splits by family, and their metrics.
* :mod:`mimo.posttrain.sft_data` turns chat examples into SFT rows: ids through the chat template and a loss
  mask on exactly the assistant's generated text (``mimo.training.loss.compute_losses(loss_mask=...)``).
* :mod:`mimo.posttrain.sft` is ``mimo sft``'s training loop (exact resume, the paper's SFT settings scaled).
* :mod:`mimo.posttrain.mopd` is the multi-teacher on-policy distillation loss (paper Eq. 7-9) and the
  GRPO outcome advantage, as pure functions over tensors.

sandbox, domains and mopd import nothing of the engine, training, model, server or CLI (a contract);
sft builds on :mod:`mimo.training` and :mod:`mimo.checkpoint`.
"""
