"""Output parsing for the chat API: generated text -> ``reasoning_content``, ``content`` and ``tool_calls``.

This module owns how the two parsers combine, whole (:func:`extract`) and streamed
(:class:`StreamingOutputParser`), and the ``finish_reason`` rule (:func:`finish_reason`). The reasoning rules
(tags, which line breaks are stripped) are in :mod:`mimo.chat_format.reasoning`; the inside of a tool-call block
(validity, schema-driven value conversion) is in :mod:`mimo.chat_format.tool_calls`.

Tool calls inside the reasoning. MiMo-V2-Flash often writes its tool call inside ``<think>`` (MiMo-V2-Flash
issue #23; peers-and-users §3): servers that parse reasoning first then report ``tool_calls: null``. Here a
complete, valid tool call is a tool call wherever it appears; it is removed from the reasoning or content
around it, and calls are numbered in the order they appear.

Malformed tool calls are text. A block is malformed when its body is not a valid call (unknown function,
garbage, unclosed ``<parameter=``), when a nested ``<tool_call>`` starts before its ``</tool_call>``, when a
block opened in the reasoning meets ``</think>`` first, or when the text ends before ``</tool_call>``. Then
its ``<tool_call>`` tag is literal text of the channel it appeared in, and parsing resumes right after that
tag, as if tool-call detection had been off for that one tag. So malformed output never raises, never
yields a half-parsed call, and with no tools (``tools=None``, e.g. ``tool_choice="none"``) the result is the
plain reasoning split of :func:`mimo.chat_format.reasoning.split_reasoning`.

Streaming. A tool call is emitted when its ``</tool_call>`` arrives and the block is valid: one delta with
``index``, ``id``, ``type`` and ``name`` (``arguments: ""``), then one delta with the whole arguments JSON.
Earlier emission could not be taken back if the block then turned out malformed, and clients execute calls
only after the stream ends anyway. Text that may be the start of a tag is held back; while a block is
open everything after ``<tool_call>`` is held back. Joining all deltas gives exactly :func:`extract`'s
result (tested on random splittings).

Limitation: a parameter value that itself contains ``</tool_call>`` or ``<tool_call>`` (a file documenting this
format, say) cannot be told from the end of the block; this matches every other Qwen3-Coder parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mimo.chat_format.reasoning import (
    THINK_END,
    THINK_START,
    ReasoningParser,
    TrimmedChannel,
    find_first,
    partial_tag_len,
    prompt_opens_reasoning,
    split_reasoning,
)
from mimo.chat_format.tool_calls import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    ToolSchemas,
    convert_param_value,
    make_tool_call,
    parse_tool_call_body,
)

__all__ = [
    "ParsedOutput",
    "ReasoningParser",
    "StreamingOutputParser",
    "ToolSchemas",
    "convert_param_value",
    "extract",
    "finish_reason",
    "parse_tool_call_body",
    "prompt_opens_reasoning",
    "split_reasoning",
]

_CONTENT = "content"
_REASONING = "reasoning_content"
_TOOL = "tool"
_TOOL_TAGS_MAX = max(len(TOOL_CALL_END), len(TOOL_CALL_START), len(THINK_END))


@dataclass
class ParsedOutput:
    """One choice's parsed text: ``content``/``reasoning`` are ``None`` when empty."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def finish_reason(engine_reason: str | None, has_tool_calls: bool) -> str | None:
    """The OpenAI ``finish_reason`` of a chat choice.

    ``"tool_calls"`` when at least one tool call was parsed (also when generation then hit the length limit,
    as vLLM does: the calls are complete and the client must run them); otherwise the engine's reason
    (``"stop"``, ``"length"``, ...). ``None`` while the choice is still generating.
    """
    if engine_reason is None:
        return None
    return "tool_calls" if has_tool_calls else engine_reason


class StreamingOutputParser:
    """Incremental reasoning + tool-call parser for one choice.

    ``feed(delta)`` returns a list of OpenAI streaming delta dicts, in text order: ``{"reasoning_content": s}``,
    ``{"content": s}``, ``{"tool_calls": [{"index", "id", "type", "function": {"name", "arguments": ""}}]}``
    then ``{"tool_calls": [{"index", "function": {"arguments": json}}]}``. ``finish()`` flushes what was held
    back (an unclosed tool call becomes text). :attr:`tool_calls` holds the complete calls parsed so far.
    ``tools`` is the request's OpenAI ``tools`` list; ``None``/empty disables tool-call parsing.
    """

    def __init__(self, tools: Iterable[Any] | None = None, starts_in_reasoning: bool = False) -> None:
        self._schemas = tools if isinstance(tools, ToolSchemas) else ToolSchemas(tools)
        self._mode = _REASONING if starts_in_reasoning else _CONTENT
        self._origin = _CONTENT  # the channel an open tool-call block started in
        # Text mode: only a held-back partial tag. Tool mode: everything after "<tool_call>", as _buf plus
        # _chunks: a long block (a file's content) arrives in many deltas, and appending each to one string
        # would copy the block once per delta. _tail (the block's last characters) lets feed() see whether
        # a delta completes a terminator tag without joining.
        self._buf = ""
        self._chunks: list[str] = []
        self._tail = ""
        self._scan_from = 0  # tool mode: terminators cannot start before this offset of _buf
        self._channels = {_CONTENT: TrimmedChannel(), _REASONING: TrimmedChannel()}
        self._out: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self._done = False

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)

    def feed(self, delta: str) -> list[dict[str, Any]]:
        if self._done:
            raise RuntimeError("StreamingOutputParser.feed() called after finish()")
        if self._mode == _TOOL:
            window = self._tail + delta
            if find_first(window, self._tool_tags()) is None:
                self._chunks.append(delta)
                self._tail = window[-(_TOOL_TAGS_MAX - 1) :]
                return []
        self._buf = "".join((self._buf, *self._chunks, delta))
        self._chunks.clear()
        self._process(final=False)
        self._tail = self._buf[-(_TOOL_TAGS_MAX - 1) :] if self._mode == _TOOL else ""
        return self._take()

    def finish(self) -> list[dict[str, Any]]:
        """Flush held-back text; an unclosed tool call is text. Later calls return ``[]``."""
        if self._done:
            return []
        self._buf = "".join((self._buf, *self._chunks))
        self._chunks.clear()
        self._process(final=True)
        self._done = True
        return self._take()

    def _take(self) -> list[dict[str, Any]]:
        out, self._out = self._out, []
        return out

    def _process(self, final: bool) -> None:
        while True:
            if self._mode == _TOOL:
                if not self._step_tool(final):
                    return
            elif not self._step_text(final):
                return

    def _step_text(self, final: bool) -> bool:
        """Consume text in the content or reasoning channel up to the next tag; False when out of input."""
        tags = [THINK_END if self._mode == _REASONING else THINK_START]
        if self._schemas:
            tags.append(TOOL_CALL_START)
        hit = find_first(self._buf, tags)
        if hit is None:
            keep = 0 if final else partial_tag_len(self._buf, tags)
            self._emit_text(self._mode, self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            return False
        i, tag = hit
        self._emit_text(self._mode, self._buf[:i])
        self._buf = self._buf[i + len(tag) :]
        if tag == TOOL_CALL_START:
            self._origin, self._mode, self._scan_from = self._mode, _TOOL, 0
        else:
            self._mode = _CONTENT if self._mode == _REASONING else _REASONING
        return True

    def _step_tool(self, final: bool) -> bool:
        """Look for the end of the open tool-call block; False when more input is needed."""
        hit = find_first(self._buf, self._tool_tags(), self._scan_from)
        if hit is None and not final:
            # Blocks can be long (a file's content): never rescan text already searched.
            self._scan_from = max(0, len(self._buf) - _TOOL_TAGS_MAX + 1)
            return False
        if hit is not None and hit[1] == TOOL_CALL_END:
            i = hit[0]
            parsed = parse_tool_call_body(self._buf[:i], self._schemas)
            if parsed is not None:
                self._emit_tool_call(*parsed)
                self._buf = self._buf[i + len(TOOL_CALL_END) :]
                self._mode = self._origin
                return True
        # Malformed: "<tool_call>" is literal text and parsing resumes right after it.
        self._mode = self._origin
        self._emit_text(self._origin, TOOL_CALL_START)
        return True

    def _tool_tags(self) -> tuple[str, ...]:
        """Tags that end an open tool-call block (only the first closes it; the others make it malformed)."""
        if self._origin == _REASONING:
            return (TOOL_CALL_END, TOOL_CALL_START, THINK_END)
        return (TOOL_CALL_END, TOOL_CALL_START)

    def _emit_text(self, channel: str, text: str) -> None:
        text = self._channels[channel].push(text)
        if not text:
            return
        last = self._out[-1] if self._out else None
        if last is not None and channel in last:  # merge adjacent deltas of one channel
            last[channel] += text
        else:
            self._out.append({channel: text})

    def _emit_tool_call(self, name: str, arguments: str) -> None:
        call = make_tool_call(name, arguments)
        index = len(self.tool_calls)
        self.tool_calls.append(call)
        header = {"index": index, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
        self._out.append({"tool_calls": [header]})
        self._out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})


def extract(text: str, tools: Iterable[Any] | None = None, starts_in_reasoning: bool = False) -> ParsedOutput:
    """Parse a whole generated text: reasoning, content and tool calls (also those inside the reasoning)."""
    parser = StreamingOutputParser(tools, starts_in_reasoning)
    parts = {_CONTENT: [], _REASONING: []}
    for delta in parser.feed(text) + parser.finish():
        for key in (_CONTENT, _REASONING):
            if key in delta:
                parts[key].append(delta[key])
    return ParsedOutput(
        content="".join(parts[_CONTENT]) or None,
        reasoning="".join(parts[_REASONING]) or None,
        tool_calls=parser.tool_calls,
    )
