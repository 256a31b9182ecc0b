"""``POST /v1/chat/completions``: chat template, reasoning and tool-call parsing, logprobs, SSE streaming.

The conversation is rendered with the tokenizer's chat template; ``chat_template_kwargs.enable_thinking`` is
passed to it only when the request sets it, so the template's own default applies otherwise (off for
MiMo-V2-Flash and mimo's template). Generation stops at EOS or ``<|im_end|>``.
Special tokens stay in the generated text because ``<think>`` and ``<tool_call>`` are special tokens of
mimo's tokenizer; the parsers of :mod:`mimo.chat_format.parsers` then split it into ``reasoning_content``,
``content`` and ``tool_calls`` (also calls written inside the reasoning, MiMo-V2-Flash issue #23).
Malformed tool-call XML is returned as text, never an error.

``tool_choice="none"`` keeps the tools in the prompt (as vLLM does) but parses no calls. Where the server
constrains decoding (``ServerConfig.constrained_decoding``, xgrammar installed), a tool call the model starts is
held to the offered tools' names and schemas (:mod:`mimo.chat_format.tool_grammar`), ``"required"`` and a
named tool force a call, and ``response_format`` holds a reply without tools to its JSON schema. Tools whose
schemas the grammar compiler cannot take are served unconstrained (logged), as before; a bad ``response_format``
schema is a 400. Without constrained decoding all of these are requests to the model only.

Streaming follows OpenAI: a first chunk with ``role``, then content / reasoning / tool-call deltas, a chunk
with ``finish_reason`` per choice, a usage chunk (``choices: []``) when ``stream_options.include_usage``,
and ``data: [DONE]``. An engine failure mid-stream is sent as an ``{"error": ...}`` event before ``[DONE]``.
With ``"mimo_provenance": true`` each engine delta's tokens ride on its first chunk as ``choice.mimo.tokens``
(``[text, provenance]`` pairs, :class:`mimo.server.responses.TokenProvenance`): what the chat page colours.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mimo.chat_format.parsers import StreamingOutputParser, extract, finish_reason, prompt_opens_reasoning
from mimo.chat_format.tool_grammar import tool_call_tag
from mimo.engine.outputs import StreamDelta, TokenLogprob
from mimo.engine.params import StructuredOutputsParams
from mimo.server.protocol import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatLogprobToken,
    ChatMessage,
    DeltaMessage,
    TokenProvenance,
    ToolCall,
    TopLogprob,
    UsageInfo,
    error_body,
)
from mimo.server.serving import (
    SSE_DONE,
    APIError,
    ServerContext,
    SSEResponse,
    api_error_from,
    merge,
    resolve_max_tokens,
    sampling_params,
    sse,
    strip_end_token,
    submit,
    unless_disconnected,
)

logger = logging.getLogger(__name__)

# chat_template_kwargs the server sets itself; a request cannot override them.
_RESERVED_TEMPLATE_ARGS = frozenset({"messages", "tools", "add_generation_prompt", "tokenize", "enable_thinking"})


@dataclass
class _Choice:
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[ChatLogprobToken] | None = None
    parser: StreamingOutputParser | None = None


def _template_message(m: ChatMessage) -> dict[str, Any]:
    """A validated message in the shape the chat template reads (``developer`` is the system role there)."""
    d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                         "content": None if m.content is None else m.text()}
    if m.tool_calls:
        d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
    if m.reasoning_content is not None:
        d["reasoning_content"] = m.reasoning_content
    for key in ("name", "tool_call_id"):
        if getattr(m, key) is not None:
            d[key] = getattr(m, key)
    return d


def render_prompt(ctx: ServerContext, req: ChatCompletionRequest) -> str:
    """The conversation rendered by the chat template (400 for what the template refuses)."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    extra = {k: v for k, v in (req.chat_template_kwargs or {}).items()
             if k not in _RESERVED_TEMPLATE_ARGS and isinstance(k, str) and k.isidentifier()}
    try:
        return ctx.tokenizer.apply_chat_template([_template_message(m) for m in req.messages], tools=tools,
                                                 add_generation_prompt=True, enable_thinking=req.thinking_enabled(),
                                                 **extra)
    except (ValueError, TypeError) as e:
        raise APIError(400, f"messages could not be rendered: {e}", param="messages") from None


async def create_chat_completion(ctx: ServerContext, req: ChatCompletionRequest, request: Request) -> Response:
    ctx.check_model(req.model)
    prompt = await ctx.off_loop(render_prompt, ctx, req)
    ids = await ctx.tokenize(prompt, "messages")
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = resolve_max_tokens(req.max_new_tokens(), len(ids), ctx.max_model_len, ctx.config.max_chat_tokens, param)
    top = (req.top_logprobs or 0) if req.logprobs else None
    spec, from_tools = _constraint(ctx, req)
    params = sampling_params(ctx, req, max_tokens=max_tokens, logprobs=top, stop_token_ids=ctx.end_of_turn_ids,
                             skip_special_tokens=False, structured_outputs=spec)
    try:
        streams = await submit(ctx, [ids], [params])
    except APIError as e:
        if not (from_tools and e.status == 400 and e.message.startswith("structured outputs:")):
            raise
        logger.warning("tool calls not constrained for this request: %s", e.message)
        streams = await submit(ctx, [ids], [dataclasses.replace(params, structured_outputs=None)])
    job = _Chat(ctx, req, len(ids), prompt_opens_reasoning(prompt))
    if req.stream:
        return SSEResponse(job.stream(merge(streams)))
    response = await unless_disconnected(request, job.collect(merge(streams)))
    return JSONResponse(response.model_dump(mode="json"))


def _constraint(ctx: ServerContext, req: ChatCompletionRequest) -> tuple[StructuredOutputsParams | None, bool]:
    """What decoding is held to, and whether it comes from the tools (else from ``response_format``)."""
    if not ctx.config.constrained_decoding:
        return None, False
    tools = req.tools_for_parsing()
    if tools:
        required = req.effective_tool_choice() != "auto"
        tag = tool_call_tag(tools, required=required, parallel=req.parallel_tool_calls is not False)
        return StructuredOutputsParams(structural_tag=tag), True
    schema = req.response_schema()
    return (StructuredOutputsParams(json=schema), False) if schema is not None else (None, False)


class _Chat:
    def __init__(self, ctx: ServerContext, req: ChatCompletionRequest, prompt_tokens: int, in_reasoning: bool) -> None:
        self.ctx, self.req, self.prompt_tokens, self.in_reasoning = ctx, req, prompt_tokens, in_reasoning
        self.tools = req.tools_for_parsing()
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.choices = [_Choice(logprobs=[] if req.logprobs else None) for _ in range(req.n)]

    def _logprobs(self, lps: list[TokenLogprob] | None) -> list[ChatLogprobToken]:
        out = []
        for lp in lps or []:
            tops = [TopLogprob(token=self.ctx.token_text(t), logprob=v, bytes=list(self.ctx.token_bytes(t)))
                    for t, v in lp.top]
            out.append(ChatLogprobToken(token=self.ctx.token_text(lp.token_id), logprob=lp.logprob,
                                        bytes=list(self.ctx.token_bytes(lp.token_id)), top_logprobs=tops))
        return out

    def _apply(self, d: StreamDelta) -> tuple[_Choice, str, list[ChatLogprobToken] | None]:
        c = self.choices[d.index]
        text = strip_end_token(self.ctx, d)
        c.text += text
        c.tokens += len(d.token_ids)
        c.finish_reason = d.finish_reason or c.finish_reason
        lps = self._logprobs(d.logprobs) if c.logprobs is not None else None
        if lps:
            c.logprobs.extend(lps)  # type: ignore[union-attr]
        return c, text, lps

    def usage(self) -> UsageInfo:
        return UsageInfo.of(self.prompt_tokens, sum(c.tokens for c in self.choices))

    async def collect(self, deltas: AsyncGenerator[tuple[int, StreamDelta], None]) -> ChatCompletionResponse:
        try:
            async for _, d in deltas:
                self._apply(d)
        except Exception as e:
            raise api_error_from(e) from None
        finally:
            await deltas.aclose()
        choices = []
        for k, c in enumerate(self.choices):
            parsed = extract(c.text, self.tools, self.in_reasoning)
            message = ChatCompletionMessage(content=parsed.content, reasoning_content=parsed.reasoning,
                                            tool_calls=[ToolCall.model_validate(t) for t in parsed.tool_calls] or None)
            choices.append(ChatCompletionChoice(
                index=k, message=message, finish_reason=finish_reason(c.finish_reason, bool(parsed.tool_calls)),
                logprobs=ChatChoiceLogprobs(content=c.logprobs) if c.logprobs is not None else None))
        return ChatCompletionResponse(id=self.id, created=self.created, model=self.ctx.model_name, choices=choices,
                                      usage=self.usage())

    def _provenance(self, d: StreamDelta) -> TokenProvenance | None:
        """The delta's tokens with their provenance, when the request asked for them (``mimo_provenance``)."""
        if not self.req.mimo_provenance or not d.token_ids:
            return None
        sources = d.provenance or [0] * len(d.token_ids)  # an engine that reports none does not speculate
        return TokenProvenance(tokens=[(self.ctx.token_text(t), p) for t, p in zip(d.token_ids, sources)])

    def _chunk(self, index: int, delta: dict[str, Any], lps: list[ChatLogprobToken] | None = None,
               reason: str | None = None, tokens: TokenProvenance | None = None) -> str:
        choice = ChatCompletionStreamChoice(index=index, delta=DeltaMessage.model_validate(delta), finish_reason=reason,
                                            logprobs=ChatChoiceLogprobs(content=lps) if lps else None, mimo=tokens)
        return sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.ctx.model_name, choices=[choice]))

    async def stream(self, deltas: AsyncGenerator[tuple[int, StreamDelta], None]) -> AsyncIterator[str]:
        try:
            for k, c in enumerate(self.choices):
                c.parser = StreamingOutputParser(self.tools, self.in_reasoning)
                yield self._chunk(k, {"role": "assistant", "content": ""})
            async for _, d in deltas:
                c, text, lps = self._apply(d)
                assert c.parser is not None
                parts = c.parser.feed(text) if text else []
                if d.finish_reason is not None:
                    parts += c.parser.finish()
                tokens = self._provenance(d)
                # logprobs and provenance ride on the delta's first chunk (an empty delta when the parser holds
                # the text back), so every generated token reaches the client once
                for part in parts or ([{}] if lps or tokens else []):
                    yield self._chunk(d.index, part, lps, tokens=tokens)
                    lps = tokens = None
                if d.finish_reason is not None:
                    yield self._chunk(d.index, {}, reason=finish_reason(d.finish_reason, c.parser.has_tool_calls))
            if self.req.include_usage:
                yield sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.ctx.model_name, choices=[],
                                              usage=self.usage()))
        except Exception as e:
            err = api_error_from(e)
            yield sse(error_body(err.message, err.type, err.param, err.code))
        finally:
            await deltas.aclose()
        yield SSE_DONE
