"""``mimo serve``: the OpenAI-compatible HTTP server (``/v1/chat/completions``, ``/v1/completions``, ...) and
its chat page at ``/``.

Binds to loopback by default; the API key comes from ``--api-key`` or the ``MIMO_API_KEY`` environment
variable. Without ``--model`` it serves the shipped mimo-nano from ``models/mimo-nano`` in the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from mimo.cli.engine_args import add_engine_arguments, engine_config, run_worker, worker_rank
from mimo.utils.paths import default_chat_model_dir

if TYPE_CHECKING:
    from mimo.checkpoint import GenerationConfig

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory in the Hugging Face layout with tokenizer.json "
                                   "(default: the shipped chat model models/mimo-nano-chat, else models/mimo-nano)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $MIMO_API_KEY, else no key)")
    p.add_argument("--served-model-name", help="the model id clients send (default: the model directory's name)")
    p.add_argument("--max-waiting", type=int, default=256,
                   help="sequences allowed to wait for a slot beyond --max-num-seqs before answering 503 (default 256)")
    p.add_argument("--generation-config", default="auto", metavar="auto|none|DIR",
                   help="sampling defaults for fields a request leaves out: 'auto' (default) reads the model's "
                        "generation_config.json (temperature, top_p, top_k, min_p, repetition_penalty) as vLLM "
                        "does, 'none' uses OpenAI's (temperature 1, top_p 1), DIR reads DIR/generation_config.json")
    p.add_argument("--no-constrained-decoding", dest="constrained_decoding", action="store_false",
                   help="do not hold tool calls to the offered tools' schemas, nor enforce tool_choice "
                        "'required'/named or response_format (default: enforced where xgrammar is installed, as "
                        "scripts/setup.sh does; pip install 'mimo[structured]')")
    add_engine_arguments(p, batch=True)
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


def _generation_config(choice: str, model_dir: Path) -> GenerationConfig:
    """The generation config that supplies defaults (--generation-config): the model's, none, or DIR's."""
    from mimo.checkpoint import GenerationConfig
    from mimo.server.serving import check_sampling_defaults

    if choice == "none":
        return GenerationConfig()
    directory = model_dir if choice == "auto" else Path(choice)
    try:
        gc = GenerationConfig.from_pretrained(directory, required=choice != "auto")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--generation-config {choice}: {e} (use auto, none or a directory that has one)") \
            from None
    check_sampling_defaults(gc.sampling, directory)
    return gc


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
    path = Path(args.model) if args.model else default_chat_model_dir()
    _check_model_dir(path, explicit=bool(args.model))
    if worker_rank():  # torchrun: rank 0 serves HTTP, this rank its part of the model
        return run_worker(args, str(path))
    sock = _listen_socket(args.host, args.port)  # before anything heavy: a taken port fails at once
    try:
        return _serve(args, path, sock)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, path: Path, sock: socket.socket) -> int:
    import uvicorn  # imported here: `mimo info` must not pay for the server stack

    from mimo.engine import structured
    from mimo.engine.llm import LLM
    from mimo.server.app import build_app
    from mimo.server.async_engine import AsyncEngine
    from mimo.server.serving import ServerConfig

    port = sock.getsockname()[1]
    config = engine_config(args)
    api_key = args.api_key or os.environ.get("MIMO_API_KEY") or None
    if not _is_loopback(args.host) and api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach the port can use the model", args.host)
    gen = _generation_config(args.generation_config, path)
    llm = LLM(path, dtype=args.dtype, compute_dtype=args.compute_dtype, mmap=args.mmap, engine_config=config)
    assert llm.tokenizer is not None  # _check_model_dir made sure tokenizer.json exists
    llm.engine.warmup()  # before the first client: its request then runs at the steady speed
    why_not = (None if not args.constrained_decoding else
               "xgrammar is not installed (pip install 'mimo[structured]')" if not structured.available() else
               "a parallel engine does not support it yet" if not llm.engine.can_constrain else None)
    constrained = args.constrained_decoding and why_not is None
    if constrained:
        llm.engine.grammars()  # xgrammar's import and the tokenizer's tables now, not in the first tool request
    engine = AsyncEngine(llm.engine, max_waiting=args.max_waiting)
    name = args.served_model_name or path.resolve().name
    config = dataclasses.replace(ServerConfig.from_generation_config(gen), constrained_decoding=constrained)
    app = build_app(engine, llm.tokenizer, name, api_key=api_key, max_model_len=llm.engine.max_model_len,
                    config=config)
    print(f"mimo serve: {name} ({path}) on http://{args.host}:{port}/v1 "
          f"(context {llm.engine.max_model_len}, MTP {args.mtp}, {'API key required' if api_key else 'no API key'})")
    if why_not:
        print(f"tool calls and response_format are not constrained: {why_not}")
    if gen.sampling or gen.max_new_tokens:
        settings = [f"{k} {v}" for k, v in gen.sampling.items()]
        if gen.max_new_tokens:
            settings.append(f"chat max_tokens {gen.max_new_tokens} when a request sets none")
        print("defaults from generation_config.json: " + ", ".join(settings))
    print(f"open {_page_url(args.host, port)} in a browser for the chat page", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    finally:
        engine.close()
    return 0


def _listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free port), or a ValueError that says why not."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not a port number (0-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ValueError(f"--host {host!r} is not an address of this machine: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts need no wait
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = " (is another server running there? choose another --port)" if e.errno == errno.EADDRINUSE else ""
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock
