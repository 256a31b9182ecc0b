"""``POST /v1/completions``: text or token-id prompts (one or a batch), ``n`` samples each, echo, logprobs, SSE.

Choice ``i * n + j`` is sample ``j`` of prompt ``i``, as in OpenAI. Logprobs have OpenAI's completions shape
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``); ``top_logprobs`` holds the top-N
alternatives plus the chosen token. With ``echo``, the prompt's tokens are listed with ``null`` logprobs:
the engine computes no prompt logprobs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mimo.engine.outputs import StreamDelta, TokenLogprob
from mimo.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
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
    submit,
    unless_disconnected,
)


@dataclass
class _Choice:
    """One choice being assembled; ``offset`` is the text length so far (for ``text_offset``)."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None
    offset: int = 0
    pending: list[str] = field(default_factory=list)  # echoed prompt text not streamed yet
    sent_logprobs: int = 0  # logprob entries already streamed (echoed prompt tokens come with the first chunk)


async def create_completion(ctx: ServerContext, req: CompletionRequest, request: Request) -> Response:
    ctx.check_model(req.model)
    prompts = req.prompts()
    if len(prompts) > ctx.config.max_prompts:
        raise APIError(400, f"at most {ctx.config.max_prompts} prompts per request, got {len(prompts)}", param="prompt")
    ids_list = []
    for p in prompts:
        if isinstance(p, str):
            ids_list.append(await ctx.tokenize(p, "prompt"))
        else:
            ctx.check_token_ids(p, "prompt")
            ids_list.append(list(p))
    texts = [p if isinstance(p, str) else None for p in prompts]
    params = [
        sampling_params(ctx, req, max_tokens=resolve_max_tokens(req.max_tokens, len(ids), ctx.max_model_len, None),
                        logprobs=req.logprobs)
        for ids in ids_list
    ]
    streams = await submit(ctx, ids_list, params)
    job = _Completion(ctx, req, ids_list, texts)
    if req.stream:
        return SSEResponse(job.stream(merge(streams)))
    response = await unless_disconnected(request, job.collect(merge(streams)))
    return JSONResponse(response.model_dump(mode="json"))


class _Completion:
    def __init__(self, ctx: ServerContext, req: CompletionRequest, ids_list: list[list[int]],
                 texts: list[str | None]) -> None:
        self.ctx, self.req, self.ids_list = ctx, req, ids_list
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.prompt_tokens = sum(len(ids) for ids in ids_list)
        self.choices: list[_Choice] = []
        for i, ids in enumerate(ids_list):
            for _ in range(req.n):
                c = _Choice(logprobs=CompletionLogprobs() if req.logprobs is not None else None)
                if req.echo:
                    self._echo(c, ids, texts[i])
                self.choices.append(c)

    def _echo(self, c: _Choice, ids: list[int], text: str | None) -> None:
        prompt_text = text if text is not None else self.ctx.tokenizer.decode(ids)
        c.pending.append(prompt_text)  # streamed with the choice's first chunk
        c.text = prompt_text
        if c.logprobs is not None:
            for t in ids:
                piece = self.ctx.token_text(t)
                self._add_logprob(c, piece, None, None)
        c.offset = len(prompt_text)

    def _add_logprob(self, c: _Choice, piece: str, lp: float | None, top: dict[str, float] | None) -> None:
        assert c.logprobs is not None
        c.logprobs.tokens.append(piece)
        c.logprobs.token_logprobs.append(lp)
        c.logprobs.top_logprobs.append(top)
        c.logprobs.text_offset.append(c.offset)
        c.offset += len(piece)

    def _logprobs_of(self, c: _Choice, lps: list[TokenLogprob] | None) -> CompletionLogprobs | None:
        """Append a delta's token logprobs to the choice; returns the entries not streamed yet (for a chunk)."""
        if c.logprobs is None:
            return None
        for lp in lps or []:
            piece = self.ctx.token_text(lp.token_id)
            top = {self.ctx.token_text(t): v for t, v in lp.top}
            top.setdefault(piece, lp.logprob)
            self._add_logprob(c, piece, lp.logprob, top)
        lo, start = c.logprobs, c.sent_logprobs
        c.sent_logprobs = len(lo.tokens)
        if start == len(lo.tokens):
            return None
        return CompletionLogprobs(tokens=lo.tokens[start:], token_logprobs=lo.token_logprobs[start:],
                                  top_logprobs=lo.top_logprobs[start:], text_offset=lo.text_offset[start:])

    def _apply(self, i: int, d: StreamDelta) -> tuple[int, _Choice, CompletionLogprobs | None]:
        index = i * self.req.n + d.index
        c = self.choices[index]
        new_lps = self._logprobs_of(c, d.logprobs)
        c.text += d.text
        c.tokens += len(d.token_ids)
        c.finish_reason = d.finish_reason or c.finish_reason
        return index, c, new_lps

    def usage(self) -> UsageInfo:
        return UsageInfo.of(self.prompt_tokens, sum(c.tokens for c in self.choices))

    async def collect(self, deltas: AsyncGenerator[tuple[int, StreamDelta], None]) -> CompletionResponse:
        try:
            async for i, d in deltas:
                self._apply(i, d)
        except Exception as e:
            raise api_error_from(e) from None
        finally:
            await deltas.aclose()
        choices = [CompletionChoice(index=k, text=c.text, logprobs=c.logprobs, finish_reason=c.finish_reason)
                   for k, c in enumerate(self.choices)]
        return CompletionResponse(id=self.id, created=self.created, model=self.ctx.model_name, choices=choices,
                                  usage=self.usage())

    async def stream(self, deltas: AsyncGenerator[tuple[int, StreamDelta], None]) -> AsyncIterator[str]:
        try:
            async for i, d in deltas:
                index, c, lps = self._apply(i, d)
                text = "".join(c.pending) + d.text
                c.pending.clear()
                yield sse(self._chunk(CompletionChoice(index=index, text=text, logprobs=lps,
                                                       finish_reason=d.finish_reason)))
            if self.req.include_usage:
                yield sse(self._chunk(None))
        except Exception as e:
            err = api_error_from(e)
            yield sse(error_body(err.message, err.type, err.param, err.code))
        finally:
            await deltas.aclose()
        yield SSE_DONE

    def _chunk(self, choice: CompletionChoice | None) -> CompletionResponse:
        return CompletionResponse(id=self.id, created=self.created, model=self.ctx.model_name,
                                  choices=[choice] if choice is not None else [],
                                  usage=self.usage() if choice is None else None)
