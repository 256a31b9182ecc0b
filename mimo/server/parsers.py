"""The chat API's output parsing, now in :mod:`mimo.chat_format.parsers` (post-training parses rollouts with it and
must not import the server); re-exported here for code written against the old path."""

from mimo.chat_format.parsers import (  # noqa: F401
    ParsedOutput,
    ReasoningParser,
    StreamingOutputParser,
    ToolSchemas,
    convert_param_value,
    extract,
    finish_reason,
    parse_tool_call_body,
    prompt_opens_reasoning,
    split_reasoning,
)
