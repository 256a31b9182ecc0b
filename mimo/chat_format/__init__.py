"""The chat format: mimo's chat template and how any chat template is rendered (the MiMo release family's format).

* :data:`CHAT_TEMPLATE` (``mimo/templates/chat_template.jinja``) writes the MiMo release family's format
  byte for byte (``shared/docs/release-chat-format.md``): ``<|im_start|>ROLE\\n...<|im_end|>`` turns with
  nothing between them, a default system message, tools listed as XML in the system turn, assistant turns
  as ``<think>REASONING</think>CONTENT`` followed by their tool calls in the release's XML with every
  parameter value verbatim, tool results under the ``tool`` role. So one parser serves mimo's own models
  and the release. Thinking is off unless ``enable_thinking`` is passed, as in MiMo-V2-Flash.
* :func:`render_chat_template` renders any template exactly as transformers does (sandboxed Jinja,
  ``trim_blocks``/``lstrip_blocks``, transformers' ``tojson``), after validating the messages. Template
  variables the caller does not set (``enable_thinking`` among them) are left undefined, so a model's own
  template keeps its own defaults.
* The output side, parsed back into OpenAI fields: :mod:`.reasoning` (``<think>`` split), :mod:`.tool_calls`
  (one XML call block) and :mod:`.parsers` (both, whole or streamed). They live here, not in the server,
  because post-training scores its rollouts with the same parser the chat API answers with.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["CHAT_TEMPLATE", "ROLES", "render_chat_template"]

CHAT_TEMPLATE = (Path(__file__).parent.parent / "templates" / "chat_template.jinja").read_text(encoding="utf-8")
ROLES = ("system", "user", "assistant", "tool")
# transformers passes a message's reasoning under any of these names; we alias them the same way.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Same as transformers' override: Jinja's own tojson HTML-escapes and sorts keys, which would
    # change the text the model sees.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    # Mirrors transformers' _compile_jinja_template: chat templates are untrusted code from the hub.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return
    raise ValueError(f"{where}: content must be a string or a list of {{'type': 'text', 'text': str}} parts, "
                     f"got {type(content).__name__}")


def _prepare_tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise ValueError(f"{where}: each tool call must be a dict, got {type(call).__name__}")
    call = dict(call)
    fn = call.get("function", call)
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"{where}: a tool call needs function.name (OpenAI shape "
                         "{'type': 'function', 'function': {'name': ..., 'arguments': ...}})")
    fn = dict(fn)
    args = fn.get("arguments")
    if args is None or args == "":
        args = {}
    if isinstance(args, str):
        # The OpenAI API sends arguments as a JSON string; the template renders one parameter per key.
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: tool call {fn['name']!r} has arguments that are not valid JSON: {e}") from e
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}: tool call {fn['name']!r} arguments must be a JSON object, "
                         f"got {type(args).__name__}")
    fn["arguments"] = dict(args)
    if "function" in call:
        call["function"] = fn
        return call
    return fn


def _prepare_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate messages and return copies in the shape templates read."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of dicts with 'role' and 'content', got {type(messages).__name__}")
    out = []
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, Mapping):
            raise ValueError(f"{where} must be a dict with 'role' and 'content', got {type(msg).__name__}")
        msg = copy.deepcopy(dict(msg))
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"{where} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        where = f"message {i} ({role})"
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant":
                raise ValueError(f"{where}: only assistant messages may carry tool_calls")
            if not isinstance(tool_calls, list):
                raise ValueError(f"{where}: tool_calls must be a list, got {type(tool_calls).__name__}")
            msg["tool_calls"] = [_prepare_tool_call(c, where) for c in tool_calls]
        if msg.get("content") is None:
            if not msg.get("tool_calls"):
                raise ValueError(f"{where} has no content")
            msg["content"] = ""
        _check_content(msg["content"], where)
        reasoning = next((msg[k] for k in _REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ValueError(f"{where}: reasoning_content must be a string, got {type(reasoning).__name__}")
            msg["reasoning_content"] = reasoning
        out.append(msg)
    return out


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
    **kwargs: Any,
) -> str:
    """Validate ``messages`` and render ``template`` the way transformers does.

    ``enable_thinking=None`` leaves the variable undefined: the template's own default applies.
    """
    if tools is not None:
        if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
            raise ValueError("tools must be a list of JSON-schema dicts (OpenAI shape {'type': 'function', "
                             "'function': {...}})")
        tools = [copy.deepcopy(dict(t)) for t in tools]
    if enable_thinking is not None:
        if not isinstance(enable_thinking, bool):
            raise ValueError(f"enable_thinking must be true or false, got {enable_thinking!r}")
        kwargs["enable_thinking"] = enable_thinking
    try:
        return _compile(template).render(
            messages=_prepare_messages(messages),
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template failed: {e}") from e
