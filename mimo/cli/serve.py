"""``mimo serve``: the OpenAI-compatible HTTP server (``/v1/chat/completions``, ``/v1/completions``, ...) and
its chat page at ``/``.

Binds to loopback by default; the API key comes from ``--api-key`` or the ``MIMO_API_KEY`` environment
variable. Without ``--model`` it serves the shipped mimo-nano from ``models/mimo-nano`` in the repository.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

import mimo

logger = logging.getLogger(__name__)


def default_model_dir() -> Path:
    return Path(mimo.__file__).resolve().parents[1] / "models" / "mimo-nano"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory in the Hugging Face layout with tokenizer.json "
                                   f"(default: {default_model_dir()})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $MIMO_API_KEY, else no key)")
    p.add_argument("--served-model-name", help="the model id clients send (default: the model directory's name)")
    p.add_argument("--max-model-len", type=int, help="context length: prompt + completion tokens (default: the model's)")
    p.add_argument("--mtp", type=int, default=0, metavar="K",
                   help="MTP speculative decoding with K draft tokens, 0-3 (default 0: off)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together (default 16)")
    p.add_argument("--max-waiting", type=int, default=256, help="queued requests before answering 503 (default 256)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights dtype (default float32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (the first requests wait for the compile)")
    p.add_argument("--generation-config", default="auto", metavar="auto|none|DIR",
                   help="sampling defaults for fields a request leaves out: 'auto' (default) reads the model's "
                        "generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty) as vLLM "
                        "does, 'none' uses OpenAI's (temperature 1, top_p 1), DIR reads DIR/generation_config.json")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level (default info)")


def _check_model_dir(path: Path, explicit: bool) -> None:
    if not (path / "config.json").is_file():
        hint = ("pass --model DIR with a Hugging Face-layout model (config.json, *.safetensors, tokenizer.json)"
                if explicit else
                "the default model mimo-nano is not in this checkout; train or fetch it into models/mimo-nano "
                "(see the README), or pass --model DIR with a Hugging Face-layout model (config.json, "
                "*.safetensors, tokenizer.json)")
        raise FileNotFoundError(f"no model at {path} (config.json missing): {hint}")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json: the server needs the model's tokenizer to read "
                                "prompts and render chats")


def _sampling_defaults(choice: str, model_dir: Path) -> dict:
    from mimo.server.serving import generation_defaults

    if choice == "none":
        return {}
    if choice == "auto":
        return generation_defaults(model_dir)
    try:
        return generation_defaults(choice, required=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--generation-config {choice}: {e} (use auto, none or a directory that has one)") \
            from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _page_url(host: str, port: int) -> str:
    """The chat page's address; a wildcard bind is reachable on loopback, and IPv6 needs brackets."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: `mimo info` must not pay for the server stack

    from mimo.engine.llm import LLM
    from mimo.server.app import build_app
    from mimo.server.async_engine import AsyncEngine
    from mimo.server.serving import ServerConfig

    path = Path(args.model) if args.model else default_model_dir()
    _check_model_dir(path, explicit=bool(args.model))
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ValueError(f"--max-model-len must be at least 2, got {args.max_model_len}")
    if args.max_num_seqs < 1:
        raise ValueError(f"--max-num-seqs must be at least 1, got {args.max_num_seqs}")
    api_key = args.api_key or os.environ.get("MIMO_API_KEY") or None
    if not _is_loopback(args.host) and api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach the port can use the model", args.host)
    defaults = _sampling_defaults(args.generation_config, path)
    llm = LLM(path, dtype=args.dtype, num_speculative_tokens=args.mtp, max_num_seqs=args.max_num_seqs,
              max_model_len=args.max_model_len, compile=args.compile)
    assert llm.tokenizer is not None  # _check_model_dir made sure tokenizer.json exists
    engine = AsyncEngine(llm.engine, max_waiting=args.max_waiting)
    name = args.served_model_name or path.resolve().name
    app = build_app(engine, llm.tokenizer, name, api_key=api_key, max_model_len=llm.engine.max_model_len,
                    config=ServerConfig().with_sampling_defaults(defaults))
    print(f"mimo serve: {name} ({path}) on http://{args.host}:{args.port}/v1 "
          f"(context {llm.engine.max_model_len}, MTP {args.mtp}, {'API key required' if api_key else 'no API key'})")
    if defaults:
        print("sampling defaults from generation_config.json: " + ", ".join(f"{k} {v}" for k, v in defaults.items()))
    print(f"open {_page_url(args.host, args.port)} in a browser for the chat page", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.close()
    return 0
