"""The shipped model: transformers loads models/mimo-nano and computes our logits; it completes code."""

import pytest
import torch

from mimo.checkpoint import MiMoForCausalLM
from mimo.utils.paths import default_model_dir

transformers = pytest.importorskip("transformers")
NANO = default_model_dir()


def test_transformers_agrees_on_mimo_nano():
    ours = MiMoForCausalLM.from_pretrained(NANO, dtype=torch.float32)
    assert ours.config.num_mtp_layers == 3
    ref = transformers.MiMoV2FlashForCausalLM.from_pretrained(NANO, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max().item() < 1e-4


def test_transformers_tokenizer_and_template_load():
    tok = transformers.AutoTokenizer.from_pretrained(NANO)
    from mimo.tokenizer import Tokenizer

    ours = Tokenizer.from_pretrained(NANO)
    text = "def f(x):\n    return x * 2  # é\n"
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == ours.apply_chat_template(msgs)


def test_mimo_nano_completes_a_function():
    from mimo import LLM, SamplingParams

    llm = LLM(str(NANO), num_speculative_tokens=3)
    out = llm.generate("def fibonacci(n):\n", SamplingParams(temperature=0, max_tokens=48))[0]
    text = out.outputs[0].text
    assert text.strip(), "mimo-nano produced no text"
    plain = LLM(str(NANO)).generate("def fibonacci(n):\n", SamplingParams(temperature=0, max_tokens=48))[0]
    assert plain.outputs[0].token_ids == out.outputs[0].token_ids  # speculative greedy == plain greedy
    assert out.stats.acceptance_length > 1.0
