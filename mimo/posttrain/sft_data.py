"""Chat examples as training rows for SFT: token ids and which of them the loss is taken on.

The loss is taken on what the assistant generates and nothing else: each assistant turn's text from the end
of the generation prompt (``<|im_start|>assistant\\n`` and, with thinking off, the ``<think></think>`` stub)
through its ``<|im_end|>`` (the model must learn to stop), never the system, user or tool turns, nor the
template's own separators. Spans are found in the rendered text, not re-derived from the template: the
conversation up to an assistant turn, rendered with the generation prompt, must be a prefix of the whole
conversation rendered — true of mimo's and the release family's templates, and checked (a template that
re-renders earlier turns differently would otherwise mask the wrong tokens silently). The text is tokenized
span by span, as inference sees it: the prompt up to a turn is encoded on its own and the model's tokens
start exactly where it ends, so no token straddles a prompt and an answer.

No packing: one example per row, padded. Packing several examples into a row would let attention cross
from one conversation into the next unless the attention mask is made block-diagonal per row, which mimo's
sdpa path does not take; at nano's sizes the padding costs less than it would to build that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mimo.tokenizer import Tokenizer

END = "<|im_end|>"


@dataclass
class SFTRow:
    ids: list[int]
    loss_mask: list[bool]  # per token: in the loss (the assistant generated it)

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)


def assistant_spans(tok: Tokenizer, messages: Sequence[Mapping[str, Any]], tools=None,
                    **template_kwargs: Any) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation rendered, and the character spans the assistant generated in it."""
    full = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=False, **template_kwargs)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prefix = tok.apply_chat_template(messages[:i], tools=tools, add_generation_prompt=True, **template_kwargs)
        if not full.startswith(prefix):
            raise ValueError(f"the chat template renders the conversation before assistant turn {i} differently "
                             "on its own than inside the whole conversation: assistant tokens cannot be located")
        end = full.find(END, len(prefix))
        if end < 0:
            raise ValueError(f"assistant turn {i} does not end with {END} in the rendered conversation")
        spans.append((len(prefix), end + len(END)))
    return full, spans


def to_row(tok: Tokenizer, example: Mapping[str, Any]) -> SFTRow:
    """One chat example (``messages``, optional ``tools`` and ``chat_template_kwargs``) as ids and loss mask."""
    messages = example["messages"]
    if not any(m.get("role") == "assistant" for m in messages):
        raise ValueError("an SFT example needs at least one assistant turn to learn from")
    text, spans = assistant_spans(tok, messages, example.get("tools"), **example.get("chat_template_kwargs", {}))
    ids: list[int] = []
    mask: list[bool] = []
    at = 0
    for start, end in spans:
        for a, b, trained in ((at, start, False), (start, end, True)):
            part = tok.encode(text[a:b]) if b > a else []
            ids += part
            mask += [trained] * len(part)
        at = end
    tail = tok.encode(text[at:]) if at < len(text) else []
    return SFTRow(ids + tail, mask + [False] * len(tail))
