"""Engine greedy decoding against transformers' generate(do_sample=False), token for token."""

import pytest
import torch

from mimo import LLM, SamplingParams
from tests.helpers import random_model, tiny_config

transformers = pytest.importorskip("transformers")


def test_batched_greedy_equals_transformers_generate(tmp_path, device):
    cfg = tiny_config(sliding_window=5, num_hidden_layers=6)
    model = random_model(cfg, seed=11)
    model.save_pretrained(tmp_path)
    model.to(device)
    ref = transformers.MiMoV2FlashForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval().to(device)
    g = torch.Generator().manual_seed(0)
    # shorter than the window, several windows long, and in between; all in one engine batch
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (3, 23, 9, 40)]
    n_new = 64
    llm = LLM(model, max_num_seqs=4, prefill_chunk=16)  # chunked prefill too
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n_new, ignore_eos=True))
    for p, o in zip(prompts, outs):
        ids = torch.tensor([p], device=device)  # explicit mask: a prompt token equal to pad_token_id must not be masked
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        assert o.outputs[0].token_ids == want
        assert o.outputs[0].finish_reason == "length"
