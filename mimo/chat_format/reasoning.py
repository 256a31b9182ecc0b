"""Reasoning parsing: split MiMo-V2-Flash output into ``reasoning_content`` and ``content`` (``<think>`` blocks).

The model thinks in ``<think>\\n ... \\n</think>\\n\\n`` and then answers. Text between ``<think>`` and
``</think>`` is reasoning; everything else is content. This module owns:

* the tag scanning helpers shared with :mod:`mimo.chat_format.parsers` (partial-tag hold-back);
* :class:`TrimmedChannel`, the streaming form of the whitespace rule below;
* :class:`ReasoningParser`, the incremental parser (``feed(delta) -> (reasoning_delta, content_delta)``);
* :func:`split_reasoning`, the same on a whole string, and :func:`prompt_opens_reasoning`.

Tag rules. Outside a think block only ``<think>`` is a tag; inside one only ``</think>`` is (a stray
``</think>`` in content or a nested ``<think>`` in reasoning is literal text). Several think blocks are
allowed; their texts are concatenated. An unterminated think block runs to the end: all of it is reasoning.
When the prompt itself ended with ``<think>`` (thinking mode: the chat template opens the block, so the
output has no opening tag) pass ``starts_in_reasoning=True``; :func:`prompt_opens_reasoning` tells.

What is stripped (the whole rule): the leading and trailing line breaks (``\\n``, ``\\r``) of the reasoning
text and of the content text. That removes the ``\\n`` after ``<think>``, the ``\\n`` before ``</think>`` and
the blank line after it, and nothing else: spaces, tabs and inner line breaks are returned verbatim. An
empty channel is ``None``. A streaming parser cannot know a line break is trailing until more text
arrives, so it holds trailing line breaks back (one token at most, in practice) and drops them at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

THINK_START = "<think>"
THINK_END = "</think>"
LINE_BREAKS = "\r\n"


def partial_tag_len(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags``.

    That suffix may become a tag once the next delta arrives, so a streaming parser must hold it back.
    """
    best = 0
    for tag in tags:
        for k in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:k]):
                best = k
                break
    return best


def find_first(text: str, tags: Sequence[str], start: int = 0) -> tuple[int, str] | None:
    """``(index, tag)`` of the earliest complete occurrence of any of ``tags`` at or after ``start``."""
    best: tuple[int, str] | None = None
    for tag in tags:
        i = text.find(tag, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, tag)
    return best


def prompt_opens_reasoning(prompt: str) -> bool:
    """True when a rendered prompt ends inside an open think block (``...<think>`` or ``...<think>\\n``).

    Then the generated text starts in the reasoning and carries no ``<think>`` of its own. A prompt that
    ends with the non-thinking stub ``<think>\\n\\n</think>\\n\\n`` is not open.
    """
    return prompt.rstrip(" \t\r\n").endswith(THINK_START)


class TrimmedChannel:
    """One output channel (reasoning or content) that drops its leading and trailing line breaks, streamed.

    Leading line breaks are dropped until the first other character. Trailing ones are held until later
    text shows they were inner ones; whatever is still held when the stream ends is simply never emitted.
    Concatenating every :meth:`push` result equals ``"".join(pieces).strip("\\r\\n")``.
    """

    def __init__(self) -> None:
        self._started = False
        self._pending = ""

    def push(self, text: str) -> str:
        """Add ``text`` to the channel; return what can be emitted now."""
        if not self._started:
            text = text.lstrip(LINE_BREAKS)
            if not text:
                return ""
            self._started = True
        body = text.rstrip(LINE_BREAKS)
        if not body:
            self._pending += text
            return ""
        out = self._pending + body
        self._pending = text[len(body) :]
        return out


class ReasoningParser:
    """Incremental ``<think>`` parser: ``feed`` text deltas, then ``flush`` once at the end.

    Each call returns ``(reasoning_delta, content_delta)``; either may be ``""``. Tags split across deltas
    (``"<th"`` then ``"ink>"``) are recognised because a possible tag prefix at the end of a delta is held
    back until the next one. If one delta both ends the reasoning and starts the content, both parts come
    back from the same call (reasoning first in the text).
    """

    def __init__(self, starts_in_reasoning: bool = False) -> None:
        self._in_think = starts_in_reasoning
        self._buf = ""  # at most a held-back partial tag
        self._reasoning = TrimmedChannel()
        self._content = TrimmedChannel()
        self._done = False

    @property
    def in_reasoning(self) -> bool:
        """Whether the text seen so far ends inside a think block."""
        return self._in_think

    def feed(self, delta: str) -> tuple[str, str]:
        if self._done:
            raise RuntimeError("ReasoningParser.feed() called after flush()")
        return self._process(self._buf + delta, final=False)

    def flush(self) -> tuple[str, str]:
        """Emit whatever was held back (an incomplete tag is plain text). Call once, at the end."""
        if self._done:
            return "", ""
        out = self._process(self._buf, final=True)
        self._done = True
        return out

    def _process(self, text: str, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            tag = THINK_END if self._in_think else THINK_START
            i = text.find(tag)
            if i < 0:
                break
            self._emit(text[:i], reasoning, content)
            text = text[i + len(tag) :]
            self._in_think = not self._in_think
        keep = 0 if final else partial_tag_len(text, (tag,))
        self._emit(text[: len(text) - keep], reasoning, content)
        self._buf = text[len(text) - keep :]
        return "".join(reasoning), "".join(content)

    def _emit(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if self._in_think:
            reasoning.append(self._reasoning.push(text))
        else:
            content.append(self._content.push(text))


def split_reasoning(text: str, starts_in_reasoning: bool = False) -> tuple[str | None, str | None]:
    """``(reasoning, content)`` of a whole generated text; an empty part is ``None``."""
    parser = ReasoningParser(starts_in_reasoning)
    r1, c1 = parser.feed(text)
    r2, c2 = parser.flush()
    return (r1 + r2) or None, (c1 + c2) or None
