"""Tool calls in the MiMo release family's XML format -> OpenAI ``tool_calls`` (the format its chat template documents).

The model writes one block per call (the format the chat template documents to the model)::

    <tool_call>
    <function=NAME>
    <parameter=P>VALUE</parameter>
    </function>
    </tool_call>

This module owns the inside of one block: :func:`parse_tool_call_body` reads the text between
``<tool_call>`` and ``</tool_call>`` and returns ``(name, arguments_json)`` or ``None`` when the block is
not a valid call; :func:`convert_param_value` turns a VALUE into JSON according to the tool's schema;
:func:`make_tool_call` builds the OpenAI object. Finding blocks in a text (and in the reasoning) is
:mod:`mimo.chat_format.parsers`' job.

A block is valid when, apart from whitespace, it is exactly ``<function=NAME>``, zero or more
``<parameter=P>VALUE</parameter>``, and ``</function>`` (which may be missing: the block's end closes it),
and NAME is one of the request's tools. A repeated parameter keeps its last value. Nothing here raises on
model output.

VALUE is kept byte for byte, as the release's template promises the model ("preserved exactly as-is,
including newlines and spaces") and as SGLang's and vLLM's parsers for this model do: a file written with
``write_file(content=...)`` keeps its final newline. (Qwen3-Coder pads values with one newline on each
side; that convention is not this model's, and stripping it would corrupt such files.) Two decisions:

* XML entities are not unescaped: ``&amp;`` stays ``&amp;``. The template writes values unescaped, so the
  model's text *is* the value; unescaping would corrupt HTML or XML a tool is asked to write (vLLM's
  choice; SGLang unescapes).
* ``null``/``None`` becomes JSON ``null`` only where the schema allows null; for a string-only parameter
  it is the text ``"null"``. (The template writes a Python ``None`` argument as ``None``.)

Value conversion, by the parameter's JSON-schema type (``type``, a list of types, ``anyOf``/``oneOf``
members, or the types of ``enum``/``const`` values; Python spellings such as ``int`` are accepted), on
VALUE without surrounding whitespace except where the result is a string:

* ``null`` allowed and VALUE is ``null``/``none`` -> ``null``;
* otherwise the first of integer, number, boolean, object, array that is allowed and parses wins
  (object/array: JSON, then a Python literal such as ``{'a': 1}``, must give a dict/list);
* otherwise ``string`` allowed -> VALUE exactly as written;
* otherwise (unknown parameter, no schema, or no allowed type parsed): JSON if VALUE parses, else VALUE.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
_FUNCTION_OPEN = re.compile(r"\s*<function=([^<>\n]*)>")
_PARAM_OPEN = "<parameter="
_PARAM_CLOSE = "</parameter>"
_FUNCTION_CLOSE = "</function>"

_INTEGER = re.compile(r"[-+]?\d+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
# Schemas written by hand (or by an LLM) often use Python's type names.
_TYPE_ALIASES = {
    "str": "string",
    "text": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "dict": "object",
    "list": "array",
    "none": "null",
}
_PARSE_ORDER = ("integer", "number", "boolean", "object", "array")


def new_tool_call_id() -> str:
    """``call_`` + 24 random hex digits, the shape OpenAI clients expect."""
    return f"call_{uuid.uuid4().hex[:24]}"


def make_tool_call(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    """An OpenAI tool call object: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    return {"id": call_id or new_tool_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


class ToolSchemas:
    """Function name -> parameter schemas, read from an OpenAI ``tools`` list.

    Accepts plain dicts (``[{"type": "function", "function": {"name", "parameters"}}]``) or pydantic models
    of that shape. Malformed entries are skipped: validating the request is the protocol's job.
    """

    def __init__(self, tools: Iterable[Any] | None) -> None:
        self._props: dict[str, dict[str, Any]] = {}
        for tool in tools or ():
            if hasattr(tool, "model_dump"):
                tool = tool.model_dump()
            if not isinstance(tool, Mapping) or not isinstance(tool.get("function"), Mapping):
                continue
            fn = tool["function"]
            name = fn.get("name")
            if not isinstance(name, str) or not name:
                continue
            params = fn.get("parameters")
            props = params.get("properties") if isinstance(params, Mapping) else None
            self._props[name] = dict(props) if isinstance(props, Mapping) else {}

    def __contains__(self, name: object) -> bool:
        return name in self._props

    def __bool__(self) -> bool:
        return bool(self._props)

    def names(self) -> list[str]:
        return list(self._props)

    def param_schema(self, function: str, param: str) -> Mapping[str, Any] | None:
        schema = self._props.get(function, {}).get(param)
        return schema if isinstance(schema, Mapping) else None


def parse_tool_call_body(body: str, schemas: ToolSchemas) -> tuple[str, str] | None:
    """``(name, arguments_json)`` for the text between ``<tool_call>`` and ``</tool_call>``, else ``None``."""
    m = _FUNCTION_OPEN.match(body)
    if m is None:
        return None
    name = m.group(1).strip()
    if name not in schemas:
        return None
    args: dict[str, Any] = {}
    pos = m.end()
    n = len(body)
    while True:
        while pos < n and body[pos].isspace():
            pos += 1
        if pos == n:  # no </function>: the block's end closes the function
            break
        if body.startswith(_FUNCTION_CLOSE, pos):
            if body[pos + len(_FUNCTION_CLOSE) :].strip():
                return None
            break
        if not body.startswith(_PARAM_OPEN, pos):
            return None
        name_end = body.find(">", pos)
        if name_end < 0:
            return None
        param = body[pos + len(_PARAM_OPEN) : name_end].strip()
        if not param or "<" in param or "\n" in param:
            return None
        value_end = body.find(_PARAM_CLOSE, name_end + 1)
        if value_end < 0:
            return None
        value = body[name_end + 1 : value_end]
        args[param] = convert_param_value(value, schemas.param_schema(name, param))
        pos = value_end + len(_PARAM_CLOSE)
    return name, json.dumps(args, ensure_ascii=False, allow_nan=False)


def convert_param_value(value: str, schema: Mapping[str, Any] | None) -> Any:
    """Convert one parameter VALUE to a JSON value by its schema (rules in the module docstring)."""
    types = schema_types(schema)
    if not types:
        return _json_or_raw(value)
    text = value.strip()
    if "null" in types and text.lower() in ("null", "none"):
        return None
    for kind in _PARSE_ORDER:
        if kind in types:
            ok, parsed = _PARSERS[kind](text)
            if ok:
                return parsed
    if "string" in types:
        return value
    return _json_or_raw(value)


def schema_types(schema: Mapping[str, Any] | None) -> set[str]:
    """The JSON types a (sub)schema allows, as far as they can be read without a full validator."""
    if not isinstance(schema, Mapping):
        return set()
    types: set[str] = set()
    declared = schema.get("type")
    for t in declared if isinstance(declared, list) else [declared]:
        if isinstance(t, str):
            types.add(_TYPE_ALIASES.get(t.lower(), t.lower()))
    for key in ("anyOf", "oneOf"):
        members = schema.get(key)
        if isinstance(members, list):
            for member in members:
                types |= schema_types(member)
    values = list(schema["enum"]) if isinstance(schema.get("enum"), list) else []
    if "const" in schema:
        values.append(schema["const"])
    for v in values:
        types.add(_json_type(v))
    return types


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    # NaN/Infinity would make the arguments string invalid JSON, so they do not parse.
    return json.loads(text, parse_constant=_reject_constant)


def _json_or_raw(value: str) -> Any:
    try:
        return _loads(value.strip())
    except (ValueError, RecursionError):
        return value


def _parse_integer(text: str) -> tuple[bool, Any]:
    if _INTEGER.fullmatch(text):
        try:
            return True, int(text)
        except ValueError:  # beyond int's digit limit
            return False, None
    if _NUMBER.fullmatch(text):
        f = float(text)
        if f.is_integer():
            return True, int(f)
    return False, None


def _parse_number(text: str) -> tuple[bool, Any]:
    if _INTEGER.fullmatch(text):
        return _parse_integer(text)
    if _NUMBER.fullmatch(text):
        f = float(text)
        if f not in (float("inf"), float("-inf")):
            return True, f
    return False, None


def _parse_boolean(text: str) -> tuple[bool, Any]:
    low = text.lower()
    if low in ("true", "false"):
        return True, low == "true"
    return False, None


def _parse_container(text: str, kind: type) -> tuple[bool, Any]:
    try:
        parsed = _loads(text)
    except (ValueError, RecursionError):
        try:  # models sometimes write Python literals: {'a': 1, 'b': True}
            parsed = ast.literal_eval(text)
            json.dumps(parsed, allow_nan=False)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False, None
    return (True, parsed) if isinstance(parsed, kind) else (False, None)


_PARSERS = {
    "integer": _parse_integer,
    "number": _parse_number,
    "boolean": _parse_boolean,
    "object": lambda text: _parse_container(text, dict),
    "array": lambda text: _parse_container(text, list),
}
