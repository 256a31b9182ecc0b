"""The constraint that holds a tool call to the request's tools: a structural tag (xgrammar's JSON format) for the
release family's XML calls, built from the OpenAI ``tools``, ``tool_choice`` and ``parallel_tool_calls``.

Decoding is free text until the model writes ``<tool_call>`` (the trigger, the llama.cpp server's "lazy
grammar"); from there it must write one of the offered calls exactly as the chat template renders them::

    <tool_call>
    <function=NAME>
    <parameter=P>VALUE</parameter>
    </function>
    </tool_call>

NAME among the tools; the parameters in the schema's order (as the template writes a call whose arguments follow
it), each at most once, the required ones present; each VALUE spelled as the template spells it and as the
parser reads it back: a string verbatim (any text up to ``</parameter>``), an integer or number as digits, a
boolean or null as Python's ``str`` writes it (``True``, ``None``; JSON's ``true``, ``null`` too), an ``enum``
as one of its values, an array or object as JSON (xgrammar's JSON-schema grammar, one space at most between
tokens). Built from xgrammar's structural-tag pieces rather than its ``qwen_xml`` style, which lets whitespace
pad every value (Qwen's convention: a padded string is a different string here) and, with ``any_order``, stops
checking required and repeated keys. So a model that decides to call gets a call that parses and validates;
whether it calls, which tool it chooses and the values it copies stay the model's. ``tool_choice="required"``
or a named tool makes the call obligatory (as vLLM does with guided decoding); ``parallel_tool_calls=false``
allows one call.

The result is a plain dict (no xgrammar here): :class:`mimo.engine.params.StructuredOutputsParams` carries it
and :mod:`mimo.engine.structured` compiles it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TRIGGER = "<tool_call>"


def tool_call_tag(tools: Sequence[dict[str, Any]], required: bool = False, parallel: bool = True) -> dict[str, Any]:
    """The structural tag for ``tools`` (OpenAI tool dicts; already narrowed to a named choice by the caller):
    calls optional unless ``required``, several allowed unless not ``parallel``."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    tags = []
    for tool in tools:
        fn = tool["function"] if "function" in tool else tool
        tags.append({"type": "tag", "begin": f"{TRIGGER}\n<function={fn['name']}>\n",
                     "content": _arguments(fn.get("parameters") or {}), "end": "</function>\n</tool_call>"})
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [TRIGGER], "tags": tags,
                                                 "at_least_one": required, "stop_after_first": not parallel}}


def _arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """One ``<parameter=P>VALUE</parameter>\\n`` per property, in order, the optional ones optional."""
    props = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    parts: list[dict[str, Any]] = []
    for name, sub in props.items():
        tag = {"type": "tag", "begin": f"<parameter={name}>", "content": _value(sub if isinstance(sub, dict) else {}),
               "end": "</parameter>\n"}
        parts.append(tag if name in required else {"type": "optional", "content": tag})
    if not parts:
        return {"type": "const_string", "value": ""}
    return parts[0] if len(parts) == 1 else {"type": "sequence", "elements": parts}


def _spell(v: Any) -> str:
    """A value as the template writes it: JSON for lists and dicts, Python's ``str`` otherwise."""
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


_INTEGER = r"-?(0|[1-9][0-9]*)"
_SCALARS: dict[str, dict[str, Any]] = {
    "integer": {"type": "regex", "pattern": _INTEGER},
    "number": {"type": "regex", "pattern": _INTEGER + r"(\.[0-9]+)?([eE][+-]?[0-9]+)?"},
    "boolean": {"type": "or", "elements": [{"type": "const_string", "value": v} for v in ("True", "False", "true",
                                                                                          "false")]},
    "null": {"type": "or", "elements": [{"type": "const_string", "value": v} for v in ("None", "null")]},
}


def _value(schema: dict[str, Any]) -> dict[str, Any]:
    """The grammar of one parameter's VALUE (text up to ``</parameter>``) for its JSON schema."""
    if "const" in schema or "enum" in schema:
        values = [schema["const"]] if "const" in schema else list(schema["enum"])
        spellings = list(dict.fromkeys(_spell(v) for v in values))
        if spellings:
            return {"type": "or", "elements": [{"type": "const_string", "value": v} for v in spellings]}
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if not kinds or "string" in kinds or any(k not in (*_SCALARS, "array", "object") for k in kinds):
        return {"type": "any_text"}  # a string (or a type this grammar does not know): verbatim text
    options = []
    for k in kinds:
        if k in _SCALARS:
            options.append(_SCALARS[k])
        else:  # array or object: JSON
            options.append({"type": "json_schema", "json_schema": {**schema, "type": k}, "max_whitespace_cnt": 1})
    return options[0] if len(options) == 1 else {"type": "or", "elements": options}
