"""The MiMo-V2-Flash network, single-device, knowing nothing of how it is loaded, served or trained."""

from mimo.model.causal_lm import CausalLM, CausalLMOutput
from mimo.model.mtp import mtp_shift

__all__ = ["CausalLM", "CausalLMOutput", "mtp_shift"]
