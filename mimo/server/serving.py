"""What the chat and completions handlers share: settings, the API error, the context-length rule, sampling
parameters, admission of requests into the engine, logprob token strings, SSE framing and client disconnects.

Defaults and limits (documented in the README):

* sampling fields a request leaves out come from the model's ``generation_config.json`` (temperature,
  top_p, top_k, min_p, repetition_penalty: vLLM's ``--generation-config auto``), else OpenAI's defaults
  (``temperature`` 1.0, ``top_p`` 1.0, ``top_k`` off);
* ``max_tokens``: a request may ask for at most the context left after its prompt (``max_model_len`` minus
  the prompt's tokens); asking for more is a 400 that says so, as vLLM does. When left out, completions get
  16 (OpenAI's default; ``null`` = up to the context) and chat completions get what fits, capped at
  :attr:`ServerConfig.max_chat_tokens` (the model's ``generation_config.json`` ``max_new_tokens`` when it
  has one, as vLLM does).
* a prompt that leaves no room for one generated token is a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mimo.checkpoint import GenerationConfig
from mimo.engine.params import SamplingParams, StructuredOutputsParams
from mimo.server.async_engine import AsyncEngine, EngineError, QueueFullError, RequestStream
from mimo.server.protocol import error_body

if TYPE_CHECKING:
    from mimo.engine.outputs import StreamDelta
    from mimo.tokenizer import Tokenizer

T = TypeVar("T")
TOKENIZE_WORKERS = 2  # requests tokenised at once; more would only share the same cores
SSE_DONE = "data: [DONE]\n\n"
RETRY_AFTER_S = "1"  # a queue-full 503 asks clients to retry after this many seconds (Retry-After)


@dataclass(frozen=True)
class ServerConfig:
    """Server limits and defaults that are not part of the engine."""

    max_body_bytes: int = 4 * 1024 * 1024  # larger request bodies get a 413
    max_chat_tokens: int = 4096  # chat completions without max_tokens: min(this, context left)
    max_prompts: int = 16  # prompts in one /v1/completions request (each is n choices)
    default_temperature: float = 1.0
    default_top_p: float = 1.0
    default_top_k: int = 0
    default_min_p: float = 0.0
    default_repetition_penalty: float = 1.0
    # constrained decoding (needs xgrammar, mimo.engine.structured): tool calls held to the offered tools'
    # schemas, tool_choice "required"/named enforced, response_format json_schema/json_object enforced.
    # Off: they are requests to the model only. `mimo serve` turns it on where xgrammar is installed.
    constrained_decoding: bool = False

    def with_sampling_defaults(self, defaults: dict[str, Any]) -> ServerConfig:
        """This config with ``defaults`` (from :func:`generation_defaults`) as the sampling defaults."""
        return dataclasses.replace(self, **{f"default_{k}": v for k, v in defaults.items()})

    @classmethod
    def from_generation_config(cls, gen: GenerationConfig) -> ServerConfig:
        """Defaults from a model's generation config: its sampling values, and its ``max_new_tokens`` as the
        cap of chat requests that set no ``max_tokens``."""
        cfg = cls().with_sampling_defaults(gen.sampling)
        return dataclasses.replace(cfg, max_chat_tokens=gen.max_new_tokens) if gen.max_new_tokens else cfg


def generation_defaults(directory: str | os.PathLike[str], required: bool = False) -> dict[str, Any]:
    """The sampling defaults in ``directory/generation_config.json`` (the keys a request may also set; see
    :class:`mimo.checkpoint.GenerationConfig`). Without such a file: ``{}``, or a FileNotFoundError if
    ``required``. A ValueError that names the file when a value is not a valid setting."""
    return check_sampling_defaults(GenerationConfig.from_pretrained(directory, required=required).sampling, directory)


def check_sampling_defaults(defaults: dict[str, Any], directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``defaults`` if they make valid SamplingParams, else a ValueError naming the generation config."""
    try:
        SamplingParams(**defaults)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(directory, 'generation_config.json')}: {e}") from None
    return defaults


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def api_error_from(e: BaseException) -> APIError:
    """The HTTP error for an exception raised while admitting or running a request."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFullError):
        return APIError(503, str(e), "server_overloaded", code="queue_full", headers={"Retry-After": RETRY_AFTER_S})
    if isinstance(e, ValueError):
        return APIError(400, str(e))
    if isinstance(e, EngineError):
        return APIError(500, str(e), "server_error", code="engine_error")
    return APIError(500, f"internal error: {type(e).__name__}", "server_error")


@dataclass
class ServerContext:
    """What every handler needs. Tokenisation and chat-template rendering run on :attr:`workers`, never on the
    event loop: a multi-megabyte prompt takes seconds to encode, and every stream would stall meanwhile."""

    engine: AsyncEngine
    tokenizer: Tokenizer
    model_name: str
    max_model_len: int
    config: ServerConfig
    end_of_turn_ids: tuple[int, ...]  # chat: stop tokens besides EOS (``<|im_end|>``)
    max_token_bytes: int = 0  # the longest token in bytes: bounds a text's token count before encoding (0: no bound)
    vocab_size: int | None = None  # the model's: token-id prompts must lie below it
    workers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(TOKENIZE_WORKERS, thread_name_prefix="mimo-tokenize"))

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread (exceptions propagate)."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)

    async def tokenize(self, text: str, param: str) -> list[int]:
        """:meth:`encode` off the event loop, after a length bound that needs no encoding."""
        if self.max_token_bytes and len(text) > self.max_model_len * self.max_token_bytes:
            # Every token covers at most max_token_bytes bytes, and a text has at least as many bytes as chars.
            least = len(text) // self.max_token_bytes
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens, but the {param} "
                                f"has at least {least} tokens ({len(text)} characters). Please shorten it.",
                           param=param, code="context_length_exceeded")
        return await self.off_loop(self.encode, text, param)

    def check_token_ids(self, ids: list[int], param: str) -> None:
        if self.vocab_size is not None and ids and max(ids) >= self.vocab_size:
            raise APIError(400, f"{param} has token id {max(ids)}, outside the vocabulary [0, {self.vocab_size})",
                           param=param)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model {name!r} does not exist; this server serves {self.model_name!r}.",
                           param="model", code="model_not_found")

    def encode(self, text: str, param: str) -> list[int]:
        try:
            # encode_batch releases the GIL while it works (encode does not), so other threads keep running.
            ids = self.tokenizer.encode_batch([text])[0]
        except (ValueError, TypeError) as e:
            raise APIError(400, f"{param} could not be tokenized: {e}", param=param) from None
        if not ids:
            raise APIError(400, f"{param} is empty after tokenization", param=param)
        return ids

    def token_text(self, token_id: int) -> str:
        """A token's text for logprobs (a token may hold part of a UTF-8 character: then U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self.tokenizer.token_bytes(token_id)
        except (ValueError, AttributeError):  # tokenizers without byte tables
            return self.tokenizer.decode([token_id]).encode("utf-8")


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int, default_cap: int | None,
                       param: str = "max_tokens") -> int:
    """The completion-token cap after the context rule (see the module docstring); 400 when it cannot fit."""
    room = max_model_len - prompt_len
    if room < 1:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
                            f"{prompt_len} tokens, leaving no room for a completion. Please shorten the prompt.",
                       param="messages" if param == "max_completion_tokens" else "prompt", code="context_length_exceeded")
    if requested is None:
        return room if default_cap is None else min(room, default_cap)
    if requested > room:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
                            f"completion). Please reduce the prompt or {param} (at most {room} here).",
                       param=param, code="context_length_exceeded")
    return requested


def sampling_params(ctx: ServerContext, req: Any, *, max_tokens: int, logprobs: int | None,
                    stop_token_ids: tuple[int, ...] = (), skip_special_tokens: bool = True,
                    structured_outputs: StructuredOutputsParams | None = None) -> SamplingParams:
    """Engine parameters for a validated completions or chat request; the server's defaults fill the gaps."""
    cfg = ctx.config
    try:
        return SamplingParams(
            n=req.n,
            temperature=cfg.default_temperature if req.temperature is None else req.temperature,
            top_p=cfg.default_top_p if req.top_p is None else req.top_p,
            top_k=cfg.default_top_k if req.top_k is None else req.top_k,
            min_p=cfg.default_min_p if req.min_p is None else req.min_p,
            repetition_penalty=cfg.default_repetition_penalty if req.repetition_penalty is None
            else req.repetition_penalty,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            seed=req.seed,
            stop=req.stop_strings(),
            stop_token_ids=list(stop_token_ids),
            max_tokens=max_tokens,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=skip_special_tokens,
            structured_outputs=structured_outputs,
        )
    except ValueError as e:
        raise APIError(400, str(e)) from None


async def submit(ctx: ServerContext, prompts: list[list[int]], params: list[SamplingParams]) -> list[RequestStream]:
    """Admit one engine request per prompt; all or none (a failure aborts those already admitted)."""
    streams: list[RequestStream] = []
    try:
        for ids, p in zip(prompts, params):
            streams.append(await ctx.engine.add(ids, p))
    except BaseException as e:
        for s in streams:
            s.cancel()
        if isinstance(e, Exception):
            raise api_error_from(e) from None
        raise
    return streams


async def merge(streams: list[RequestStream]) -> AsyncGenerator[tuple[int, StreamDelta], None]:
    """``(prompt index, delta)`` from several request streams as they come; closing the iterator aborts them all."""
    if len(streams) == 1:
        try:
            async for d in streams[0]:
                yield 0, d
        finally:
            streams[0].cancel()
        return
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for d in s:
                q.put_nowait((i, d))
            q.put_nowait((i, None))
        except Exception as e:
            q.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, item = await q.get()
            if item is None:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:  # nothing awaited here: this also runs when the client is gone and the task is being cancelled
        for t in tasks:
            t.cancel()
        for s in streams:
            s.cancel()


def strip_end_token(ctx: ServerContext, d: StreamDelta) -> str:
    """The delta's text without the text of the EOS / end-of-turn token that ended it.

    Chat keeps special tokens in the text (``<think>`` and ``<tool_call>`` are special tokens of mimo's
    tokenizer and the parsers need them), so the token that stopped generation would otherwise show up.
    """
    text = d.text
    if d.finish_reason == "stop" and not isinstance(d.stop_reason, str) and d.token_ids:
        end = ctx.token_text(d.token_ids[-1])
        if end and text.endswith(end):
            text = text[: -len(end)]
    return text


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class SSEResponse(StreamingResponse):
    """A ``text/event-stream`` response that closes its generator at once when the client goes away.

    Starlette cancels the sending task on disconnect but leaves the generator to the garbage collector;
    closing it here runs its ``finally`` now, which aborts the engine request and frees its cache slot.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (which aborts its engine requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise APIError(400, "the client disconnected before the response was ready", code="client_disconnected")


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
