"""generation_config.json: its end-of-sequence ids stop generation, beside config.json's and the tokenizer's."""

import json

from mimo.engine.llm import LLM
from mimo.engine.params import SamplingParams
from tests.helpers import tiny_model_dir


def test_generation_config_eos_ids_end_sequences(tmp_path):
    path = tiny_model_dir(tmp_path / "m")
    prompt = "def add(a, b):"
    free = LLM(path).generate(prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    first, second = free.outputs[0].token_ids[:2]
    # The release lists <|im_end|> only in generation_config.json; any id listed there must stop a sequence.
    with open(tmp_path / "m" / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [12345, second]}, f)
    llm = LLM(path)
    assert second in llm.engine.eos_ids and 12345 in llm.engine.eos_ids
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    assert out.token_ids == [first, second] and out.finish_reason == "stop"
