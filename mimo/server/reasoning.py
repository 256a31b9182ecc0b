"""Reasoning parsing, now in :mod:`mimo.chat_format.reasoning` (see :mod:`mimo.server.parsers`); re-exported here."""

from mimo.chat_format.reasoning import (  # noqa: F401
    LINE_BREAKS,
    THINK_END,
    THINK_START,
    ReasoningParser,
    TrimmedChannel,
    find_first,
    partial_tag_len,
    prompt_opens_reasoning,
    split_reasoning,
)
