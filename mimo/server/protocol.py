"""OpenAI-compatible request models (pydantic v2) for the API subset mimo serves, and their validation.

Owns what clients may send to ``/v1/completions`` and ``/v1/chat/completions``. The response models and
error bodies live in :mod:`mimo.server.responses` and are re-exported here, so the server imports one module.

Requests ignore unknown fields (OpenAI SDKs and agent frameworks send extras). Types are strict, as in
OpenAI's API: ``"stream": "yes"``, ``"n": "2"`` or ``"temperature": "0.5"`` are errors, not coerced (an
integer is a valid number). Sampling fields left out are ``None``: the server applies its defaults (the
model's ``generation_config.json``, else OpenAI's), so a model never sees a default it did not choose.
Failed checks are pydantic errors located at the bad field (``temperature``, ``messages[2]``,
``tools[0].function.name``) whose text says what is allowed; :func:`validation_error_body` turns them into
one OpenAI error body (``param`` = the field's path).

mimo's one extra field, ``mimo_provenance`` (chat, streamed only), adds each token's MTP provenance to the
stream (:class:`mimo.server.responses.TokenProvenance`); clients that do not send it never see it.

``response_format`` (``text``, ``json_object``, ``json_schema``) and ``tool_choice`` (``"required"``, a named
tool) are enforced by constrained decoding where the server has it (:attr:`ServerConfig.constrained_decoding
<mimo.server.serving.ServerConfig>`); without it they are requests to the model, not constraints
(:meth:`ChatCompletionRequest.tools_for_parsing` still narrows parsing to a named tool). Rejected as OpenAI
rejects them: ``stream_options`` without ``stream``, a ``tool`` message without ``tool_call_id``,
a ``seed`` outside the 64-bit signed range.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from mimo.server.responses import (
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatLogprobToken,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ErrorDetail,
    ErrorResponse,
    FunctionCall,
    ModelCard,
    ModelList,
    TokenProvenance,
    ToolCall,
    TopLogprob,
    UsageInfo,
    error_body,
    error_location,
    validation_error_body,
)

__all__ = [
    "ChatChoiceLogprobs",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionStreamChoice",
    "ChatLogprobToken",
    "ChatMessage",
    "ChatTool",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "ErrorDetail",
    "ErrorResponse",
    "FunctionCall",
    "FunctionDefinition",
    "ModelCard",
    "ModelList",
    "NamedToolChoice",
    "StreamOptions",
    "TextContentPart",
    "TokenProvenance",
    "ToolCall",
    "TopLogprob",
    "UsageInfo",
    "error_body",
    "error_location",
    "validation_error_body",
]

TOOL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_N = 16
MAX_LOGPROBS = 20
MAX_STOP = 4
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# field -> (low, high, low end open): the closed/open ends are OpenAI's documented ranges.
_RANGES = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
}


# --------------------------------------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingRequest(_Request):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    user: str | None = None

    @field_validator("n", "stream", "ignore_eos", mode="before")
    @classmethod
    def _null_is_default(cls, v: Any, info: ValidationInfo) -> Any:
        return cls.model_fields[info.field_name].default if v is None else v

    @field_validator(*_RANGES)
    @classmethod
    def _in_range(cls, v: float | None, info: ValidationInfo) -> float | None:
        lo, hi, lo_open = _RANGES[info.field_name]
        # Written so that NaN fails every comparison and is rejected.
        if v is not None and not ((lo < v if lo_open else lo <= v) and v <= hi):
            raise ValueError(f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v}")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None) -> int | None:
        if v is not None and v < -1:
            raise ValueError(f"must be -1 or 0 (disabled) or a positive integer, got {v}")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if not 1 <= v <= MAX_N:
            raise ValueError(f"must be between 1 and {MAX_N}, got {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not SEED_MIN <= v <= SEED_MAX:
            raise ValueError(f"must be a 64-bit signed integer (between {SEED_MIN} and {SEED_MAX}), got {v}")
        return v

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and "stream" in info.data and not info.data["stream"]:
            raise ValueError("is only allowed when stream is true")
        return v

    @field_validator("repetition_penalty")
    @classmethod
    def _repetition_penalty(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v < math.inf):
            raise ValueError(f"must be a positive number (1 = off), got {v}")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str) and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            raise ValueError("must be a string or a list of strings")
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def stop_strings(self) -> list[str]:
        """``stop`` as a list (empty when unset)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions``. ``max_tokens=None`` means up to the context limit."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False

    @field_validator("echo", mode="before")
    @classmethod
    def _echo_null(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        shape = "a non-empty string, a list of strings, a list of token ids or a list of lists of token ids"
        if isinstance(v, str):
            if not v:
                raise ValueError("must not be empty")
            return v
        if not isinstance(v, list) or not v:
            raise ValueError(f"must be {shape}")
        if all(isinstance(p, str) for p in v):
            if any(p == "" for p in v):
                raise ValueError("prompt strings must not be empty")
            return v
        if all(_is_token_id(t) for t in v):
            return v
        if all(isinstance(p, list) and p and all(_is_token_id(t) for t in p) for p in v):
            return v
        raise ValueError(f"must be {shape} (token ids are integers >= 0)")

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_LOGPROBS:
            raise ValueError(f"must be between 0 and {MAX_LOGPROBS}, got {v}")
        return v

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a batch: a list of strings or a list of token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


def _is_token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


class TextContentPart(_Request):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Request):
    """One message of a conversation. ``reasoning`` is accepted as a spelling of ``reasoning_content``."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _reasoning_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("reasoning_content") is None and isinstance(data.get("reasoning"), str):
            data = {**data, "reasoning_content": data["reasoning"]}
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, v: Any) -> Any:
        # Checked here, not by the union, so that one clear error names the bad part.
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError("must be a string or a list of {'type': 'text', 'text': ...} parts")
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"part {i} has type {kind!r}; this model accepts only 'text' parts")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"part {i} needs a string 'text' field")
        return v

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content is required for a {self.role!r} message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as vLLM does; ``""`` when absent)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content)


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOOL_NAME_PATTERN.match(v):
            raise ValueError(f"{v!r} is not a valid function name: it must match {TOOL_NAME_PATTERN.pattern}")
        return v

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, dict):
            raise ValueError("must be a JSON schema object")
        if v.get("type", "object") != "object":
            raise ValueError(f"must be a schema of type 'object', got type {v.get('type')!r}")
        if not isinstance(v.get("properties", {}), dict):
            raise ValueError("properties must be an object")
        return v


class ChatTool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` wins over ``max_tokens``; neither = no cap."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None  # text | json_object | json_schema (enforced where constrained)
    # mimo's extra (the chat page sends it): each streamed choice carries its tokens and how MTP produced them.
    mimo_provenance: bool = False

    @field_validator("logprobs", "mimo_provenance", mode="before")
    @classmethod
    def _false_when_null(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("must contain at least one message")
        return v

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        if not 0 <= v <= MAX_LOGPROBS:
            raise ValueError(f"must be between 0 and {MAX_LOGPROBS}, got {v}")
        if v > 0 and not info.data.get("logprobs"):
            raise ValueError("requires logprobs=true")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[ChatTool] | None) -> list[ChatTool] | None:
        names = [t.function.name for t in v or []]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"function names must be unique; repeated: {', '.join(dup)}")
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice_shape(cls, v: Any) -> Any:
        if v is None or v in ("none", "auto", "required"):
            return v
        fn = v.get("function") if isinstance(v, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and v.get("type", "function") == "function"):
            raise ValueError(
                f"must be 'none', 'auto', 'required' or {{'type': 'function', 'function': {{'name': ...}}}}, got {v!r}"
            )
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v: Any, info: ValidationInfo) -> Any:
        if "tools" not in info.data:  # tools itself failed validation; that error is enough
            return v
        names = {t.function.name for t in info.data["tools"] or []}
        if isinstance(v, NamedToolChoice) and v.function.name not in names:
            raise ValueError(f"names function {v.function.name!r}, which is not in tools")
        if v == "required" and not names:
            raise ValueError("'required' needs at least one tool in tools")
        return v

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        kind = v.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError(f"type must be 'text', 'json_object' or 'json_schema', got {kind!r}")
        if kind == "json_schema":
            spec = v.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise ValueError("json_schema must be an object {'name': ..., 'schema': {...}}")
        return v

    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema ``response_format`` asks the reply to follow (``{"type": "object"}`` for
        ``json_object``; a ``json_schema`` without ``schema`` is any JSON object too), or ``None`` for text."""
        v = self.response_format or {}
        if v.get("type") == "json_object":
            return {"type": "object"}
        if v.get("type") == "json_schema":
            return v["json_schema"].get("schema") or {"type": "object"}
        return None

    def max_new_tokens(self) -> int | None:
        """The completion-token cap: ``max_completion_tokens``, else ``max_tokens``, else ``None`` (no cap)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def effective_tool_choice(self) -> str | NamedToolChoice:
        """OpenAI's default: ``"auto"`` when tools are given, ``"none"`` otherwise."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    def tools_for_parsing(self) -> list[dict[str, Any]] | None:
        """The tools the output parser should recognise (``None``: do not parse tool calls).

        ``tool_choice="none"`` -> ``None``; a named choice -> only that tool, so calls to others stay text.
        """
        choice = self.effective_tool_choice()
        if choice == "none" or not self.tools:
            return None
        tools = self.tools
        if isinstance(choice, NamedToolChoice):
            tools = [t for t in tools if t.function.name == choice.function.name]
        return [t.model_dump(exclude_none=True) for t in tools]

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        thinking = (v or {}).get("enable_thinking")
        if thinking is not None and not isinstance(thinking, bool):
            raise ValueError(f"enable_thinking must be true or false, got {thinking!r}")
        return v

    def thinking_enabled(self) -> bool | None:
        """``chat_template_kwargs["enable_thinking"]``, or ``None`` when the request leaves it to the template
        (MiMo-V2-Flash's own default is off, per its model card; other templates may default to on)."""
        return (self.chat_template_kwargs or {}).get("enable_thinking")
