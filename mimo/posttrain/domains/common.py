"""What the three domains share: the example record, seeded random streams, and the answer text helpers.

An example is one JSON object (one line of a split's JSONL file)::

    {"id": "tools-train-00042", "domain": "tools", "family": "textwrap", "split": "train",
     "messages": [...],               # the whole conversation, OpenAI chat shape, reference answers included
     "tools": [...],                  # OpenAI tool schemas offered (tools domain only)
     "chat_template_kwargs": {...},   # e.g. {"enable_thinking": true} for arithmetic
     "reference": {...}}              # what the domain's metric compares against

The prompt is ``messages`` up to (not including) the first assistant message; the metric scores that first
assistant turn. SFT trains on every assistant turn of ``messages``.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Any

__all__ = ["WORDS", "answer_text", "prompt_messages", "stream", "strip_reasoning"]

WORDS = ("river", "stone", "maple", "copper", "lantern", "harbor", "velvet", "orbit", "meadow", "signal", "cedar",
         "ember", "glacier", "pixel", "summit", "willow", "falcon", "quartz", "tundra", "violet", "anchor", "breeze")
"""Plain words for generated values (names, paths, texts) in the tool domains, real and synthetic."""


def stream(seed: int, *names: str) -> random.Random:
    """A random stream for ``(seed, names)``: independent of Python's hash seed and of other streams, so
    adding examples to one domain or family never changes another's."""
    key = zlib.crc32("/".join(names).encode())
    return random.Random(seed * 1_000_003 + key)


def prompt_messages(example: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation up to the first assistant turn: what a policy is asked to continue."""
    out = []
    for m in example["messages"]:
        if m["role"] == "assistant":
            break
        out.append(m)
    return out


def strip_reasoning(text: str) -> str:
    """Text after the last ``</think>`` (all of it if there is none): the answer without its scratchpad."""
    return text.rsplit("</think>", 1)[-1]


def answer_text(completion: Any) -> str:
    """A completion's answer text: a string, or a message dict (``content``, reasoning kept apart)."""
    if isinstance(completion, str):
        return strip_reasoning(completion)
    if isinstance(completion, dict):
        content = completion.get("content") or ""
        return strip_reasoning(content) if isinstance(content, str) else ""
    return ""


_WS = re.compile(r"\s+")


def one_line(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters (at a word when possible)."""
    text = _WS.sub(" ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0]
    return cut + "..."
