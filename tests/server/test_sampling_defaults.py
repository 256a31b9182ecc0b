"""Sampling defaults from the model's generation_config.json (vLLM's ``--generation-config auto``)."""

import json
from types import SimpleNamespace

import pytest

from mimo.checkpoint import GenerationConfig
from mimo.cli.serve import _generation_config
from mimo.server.protocol import CompletionRequest
from mimo.server.serving import ServerConfig, generation_defaults, sampling_params


def _write(d, cfg) -> None:
    (d / "generation_config.json").write_text(json.dumps(cfg) if not isinstance(cfg, str) else cfg)


def test_generation_defaults_read_only_request_settable_keys(tmp_path):
    assert generation_defaults(tmp_path) == {}  # no file: OpenAI's defaults
    _write(tmp_path, {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "top_k": None, "max_new_tokens": 256,
                      "eos_token_id": 0})
    assert generation_defaults(tmp_path) == {"temperature": 0.7, "top_p": 0.95}


@pytest.mark.parametrize("cfg, message", [
    ({"top_p": 0}, "top_p"),
    ({"temperature": "hot"}, "temperature"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_bad_generation_config_is_a_clear_error(tmp_path, cfg, message):
    _write(tmp_path, cfg)
    with pytest.raises(ValueError, match=message) as e:
        generation_defaults(tmp_path)
    assert "generation_config.json" in str(e.value)


def test_request_fields_override_the_model_defaults():
    cfg = ServerConfig().with_sampling_defaults({"temperature": 0.7, "top_p": 0.95, "top_k": 20, "min_p": 0.05,
                                                 "repetition_penalty": 1.1})
    ctx = SimpleNamespace(config=cfg)
    p = sampling_params(ctx, CompletionRequest(model="m", prompt="x"), max_tokens=4, logprobs=None)
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (0.7, 0.95, 20, 0.05, 1.1)
    req = CompletionRequest(model="m", prompt="x", temperature=0, top_p=1, top_k=0, min_p=0, repetition_penalty=1)
    p = sampling_params(ctx, req, max_tokens=4, logprobs=None)
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty) == (0, 1, 0, 0, 1)
    p = sampling_params(SimpleNamespace(config=ServerConfig()), CompletionRequest(model="m", prompt="x"),
                        max_tokens=4, logprobs=None)
    assert (p.temperature, p.top_p, p.top_k) == (1.0, 1.0, 0)  # OpenAI's defaults without a generation config


def test_serve_generation_config_choices(tmp_path):
    _write(tmp_path, {"temperature": 0.3, "max_new_tokens": 256, "eos_token_id": [2, 5]})
    assert _generation_config("auto", tmp_path) == GenerationConfig({"temperature": 0.3}, (2, 5), 256)
    assert _generation_config("none", tmp_path) == GenerationConfig()
    assert _generation_config(str(tmp_path), tmp_path / "elsewhere").sampling == {"temperature": 0.3}
    with pytest.raises(FileNotFoundError, match="no generation_config.json"):
        _generation_config(str(tmp_path / "missing"), tmp_path)
    _write(tmp_path, {"top_p": 0})
    with pytest.raises(ValueError, match="top_p"):
        _generation_config("auto", tmp_path)


def test_max_new_tokens_caps_chat_requests_without_max_tokens():
    cfg = ServerConfig.from_generation_config(GenerationConfig({"top_p": 0.95}, (), 256))
    assert cfg.max_chat_tokens == 256 and cfg.default_top_p == 0.95
    assert ServerConfig.from_generation_config(GenerationConfig()).max_chat_tokens == ServerConfig().max_chat_tokens


@pytest.mark.parametrize("cfg, message", [
    ({"eos_token_id": "<|im_end|>"}, "eos_token_id"),
    ({"eos_token_id": [1, -2]}, "eos_token_id"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_generation_limits_are_clear_errors(tmp_path, cfg, message):
    _write(tmp_path, cfg)
    with pytest.raises(ValueError, match=message):
        GenerationConfig.from_pretrained(tmp_path)
