"""OpenAI-compatible response models (pydantic v2) and error bodies; re-exported by :mod:`mimo.server.protocol`.

Owns the wire shape of what the server sends: completions (whole and streamed, which share one shape),
chat completions, chat stream chunks, ``/v1/models``, usage, logprobs, and the OpenAI error body
``{"error": {"message", "type", "param", "code"}}`` (:func:`error_body`, :func:`validation_error_body`).

Serialisation follows OpenAI: a chat message always carries ``content`` (``null`` when it only calls tools)
and carries ``tool_calls`` only when there are some; streamed deltas (:class:`DeltaMessage` and its parts)
carry only the fields that are set, a chunk's ``usage`` appears only on the final usage chunk, and a streamed
choice's ``mimo`` (token provenance, mimo's one extra) only when the request asked for it.
:class:`FunctionCall` and :class:`ToolCall` live here
because requests (assistant history) and responses share them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, field_validator, model_serializer

_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes"})


def _random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_json(cls, v: Any) -> Any:
        # Some clients echo arguments back as an object instead of the JSON string.
        return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v

    def arguments_dict(self) -> dict[str, Any]:
        """The arguments parsed (what chat templates iterate over); ``{}`` when they are not a JSON object."""
        try:
            parsed = json.loads(self.arguments)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


class _DropNone(BaseModel):
    """Serialises without ``None`` fields: streamed deltas carry only what changed."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """A completion, and also each streamed completion chunk (OpenAI uses the same shape for both)."""

    id: str = Field(default_factory=lambda: _random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobToken(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprobToken] | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("tool_calls"):
            data.pop("tool_calls", None)
        return data


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaFunctionCall(_DropNone):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_DropNone):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(_DropNone):
    """A streamed delta; validates the dicts :class:`mimo.chat_format.parsers.StreamingOutputParser` returns."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class TokenProvenance(BaseModel):
    """mimo's extra on a streamed chat choice, sent only to requests with ``"mimo_provenance": true``.

    ``tokens`` are the engine delta's tokens as ``[text, provenance]``: the token's raw text (special tokens
    included; a token holding part of a UTF-8 character reads U+FFFD) and 0 when the main model produced it,
    k = 1..3 when it is MTP block k's draft that verification accepted. OpenAI clients ignore the field.
    """

    tokens: list[tuple[str, int]]


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    mimo: TokenProvenance | None = None  # serialised only when set

    @model_serializer(mode="wrap")
    def _drop_unset_mimo(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("mimo") is None:
            data.pop("mimo", None)
        return data


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed chat completion; ``usage`` is only serialised when set."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None

    @model_serializer(mode="wrap")
    def _drop_empty_usage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ("usage", "system_fingerprint"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "mimo"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, the body of every OpenAI error response."""
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def error_location(loc: Sequence[Any]) -> str:
    """A pydantic error location as a field path: ``("body", "messages", 0, "content")`` -> ``messages[0].content``.

    FastAPI's leading ``"body"`` and pydantic's union-member tags (``str``, ``list[str]``, ``NamedToolChoice``,
    ``function-after[...]``) are left out: OpenAI field names are lower-case identifiers, tags are not (or
    are built-in type names).
    """
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and _is_field_name(part) and not (i == 0 and part == "body"):
            path += f".{part}" if path else part
    return path


def _is_field_name(part: str) -> bool:
    return part.isidentifier() and part[0].islower() and part not in _TYPE_TAGS


def validation_error_body(errors: Sequence[Mapping[str, Any]], max_errors: int = 5) -> dict[str, Any]:
    """One OpenAI error body (type ``invalid_request_error``) for pydantic/FastAPI ``errors()``.

    ``param`` is the first bad field's path; the message lists up to ``max_errors`` problems.
    """
    parts = []
    for err in list(errors)[:max_errors]:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        path = error_location(err.get("loc", ()))
        parts.append(f"{path}: {msg}" if path else msg)
    if len(errors) > max_errors:
        parts.append(f"... and {len(errors) - max_errors} more")
    param = error_location(errors[0].get("loc", ())) if errors else None
    return error_body("; ".join(parts) or "invalid request", "invalid_request_error", param=param or None)
