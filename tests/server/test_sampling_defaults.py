"""Sampling defaults from the model's generation_config.json (vLLM's ``--generation-config auto``)."""

import json
from types import SimpleNamespace

import pytest

from mimo.cli.serve import _sampling_defaults
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
    _write(tmp_path, {"temperature": 0.3})
    assert _sampling_defaults("auto", tmp_path) == {"temperature": 0.3}
    assert _sampling_defaults("none", tmp_path) == {}
    assert _sampling_defaults(str(tmp_path), tmp_path / "elsewhere") == {"temperature": 0.3}
    with pytest.raises(FileNotFoundError, match="no generation_config.json"):
        _sampling_defaults(str(tmp_path / "missing"), tmp_path)
