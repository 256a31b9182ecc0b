"""Tokenizer: byte-level BPE training, chat-template rendering, and incremental detokenisation.

This module owns everything between text and token ids (the release's tokenizer is a Qwen2-family byte-level BPE):

* :func:`train_bpe` trains the byte-level BPE of mimo-nano with the ``tokenizers`` library. The
  added special tokens come first (``<|endoftext|>`` is id 0), in the order of :data:`SPECIAL_TOKENS`.
* :class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` and reads/writes a Hugging Face model
  directory (``tokenizer.json`` + ``tokenizer_config.json``), so transformers' ``AutoTokenizer``
  loads what we save and we load what the hub ships (including the released MiMo tokenizer).
* ``Tokenizer.apply_chat_template`` renders the model's chat template (mimo's own,
  :data:`mimo.chat_format.CHAT_TEMPLATE`, unless the model ships one) exactly as transformers does.
* :class:`IncrementalDetokenizer` turns a stream of ids into text deltas without ever emitting
  half of a multi-byte UTF-8 character.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mimo.chat_format import CHAT_TEMPLATE, ROLES, render_chat_template

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<think>", "</think>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)
DEFAULT_MODEL_MAX_LENGTH = 32768

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_MODEL_MAX_LENGTH",
    "ENDOFTEXT",
    "ROLES",
    "SPECIAL_TOKENS",
    "IncrementalDetokenizer",
    "Tokenizer",
    "render_chat_template",
    "train_bpe",
]


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              split_digits: bool = False) -> tokenizers.Tokenizer:
    """Train a byte-level BPE on ``texts``; :data:`SPECIAL_TOKENS` get ids ``0..8``.

    The 256 byte symbols are always in the vocabulary, so any text round-trips. The result is a
    function of the multiset of texts only: the trainer breaks count ties by pair ids, which
    are fixed by the sorted byte alphabet.

    ``split_digits``: every digit is a token of its own (as the release family's tokenizer does). Without it a
    number is one pre-token with the space before it, so ``year = 2013`` and ``>2013<`` spell 2013 with
    different tokens, and copying a value from a request into a call is not copying tokens.
    """
    minimum = len(SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {minimum} "
                         f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
    tok = tokenizers.Tokenizer(models.BPE())  # no unk token: every byte is in the alphabet
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# ---------------------------------------------------------------------------------------------
# Tokenizer wrapper
# ---------------------------------------------------------------------------------------------


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json spells tokens either as strings or as AddedToken dicts.
    if isinstance(value, Mapping):
        return value.get("content")
    return value


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte <-> printable-char table, the one the ByteLevel pre-tokenizer and decoder use.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the metadata of ``tokenizer_config.json``."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        eos_token: str = ENDOFTEXT,
        pad_token: str | None = ENDOFTEXT,
        bos_token: str | None = None,
        chat_template: str | None = CHAT_TEMPLATE,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    ) -> None:
        self.backend = tokenizer
        self.eos_token, self.pad_token, self.bos_token = eos_token, pad_token, bos_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        if not eos_token:
            raise ValueError("the tokenizer needs an eos_token (tokenizer_config.json has none)")
        for name, token in (("eos_token", eos_token), ("pad_token", pad_token), ("bos_token", bos_token)):
            if token is not None and tokenizer.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
        self._token_bytes: dict[int, bytes] = {}
        self._max_token_bytes: int | None = None

    # -- loading and saving --------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Load ``tokenizer.json`` and ``tokenizer_config.json`` (and ``chat_template.jinja``) from a model dir."""
        directory = os.fspath(directory)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer.json in {directory}")
        backend = tokenizers.Tokenizer.from_file(path)
        config: dict[str, Any] = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        else:
            logger.warning("%s has no tokenizer_config.json; using mimo's defaults (eos %s)", directory, ENDOFTEXT)
        template = config.get("chat_template", CHAT_TEMPLATE if not config else None)
        if isinstance(template, list):  # older configs hold named templates
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_path = os.path.join(directory, "chat_template.jinja")
        if os.path.exists(jinja_path):  # transformers >= 4.43 saves the template next to the config
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()
        return cls(
            backend,
            eos_token=_token_content(config.get("eos_token", ENDOFTEXT)),
            pad_token=_token_content(config.get("pad_token", ENDOFTEXT)),
            bos_token=_token_content(config.get("bos_token")),
            chat_template=template,
            model_max_length=int(config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)),
        )

    def config_dict(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` contents, in the shape transformers writes."""
        added = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self.backend.get_added_tokens_decoder().items())
        }
        return {
            "added_tokens_decoder": added,
            "bos_token": self.bos_token,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": self.eos_token,
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(self.config_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")

    # -- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the embedding needs at least this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int:
        return self.backend.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.backend.token_to_id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or ``None`` when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings inside ``text`` become their ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """:meth:`encode` over many texts, in parallel inside ``tokenizers``."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (what the ByteLevel decoder turns it into)."""
        b = self._token_bytes.get(token_id)
        if b is None:
            token = self.backend.id_to_token(token_id)
            if token is None:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
            table = _byte_decoder()
            # Like tokenizers' ByteLevel decoder: a token with any char outside the table (an added
            # token such as "<|im_end|>" is plain text) decodes to its own UTF-8 bytes.
            if all(c in table for c in token):
                b = bytes(table[c] for c in token)
            else:
                b = token.encode("utf-8")
            self._token_bytes[token_id] = b
        return b

    def max_token_bytes(self) -> int:
        """The most bytes one token stands for (0 when unknown: not a byte-level tokenizer). A text of ``n``
        bytes has at least ``n / max_token_bytes()`` tokens, which bounds its length without encoding it."""
        if self._max_token_bytes is None:
            table = _byte_decoder()
            longest = 0
            if self.is_byte_level:
                # Byte-level pieces map one char to one byte; added tokens are their UTF-8 text.
                for token in self.backend.get_vocab(with_added_tokens=True):
                    n = len(token) if all(c in table for c in token) else len(token.encode("utf-8"))
                    longest = max(longest, n)
            self._max_token_bytes = longest
        return self._max_token_bytes

    @property
    def is_byte_level(self) -> bool:
        return isinstance(self.backend.decoder, decoders.ByteLevel)

    # -- chat ----------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        tokenize: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation with the chat template; token ids when ``tokenize`` is true.

        ``enable_thinking=None`` lets the template decide (mimo's own template: thinking off)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json has none)")
        kwargs.setdefault("eos_token", self.eos_token)
        kwargs.setdefault("pad_token", self.pad_token)
        kwargs.setdefault("bos_token", self.bos_token)
        text = render_chat_template(self.chat_template, messages, tools=tools,
                                    add_generation_prompt=add_generation_prompt,
                                    enable_thinking=enable_thinking, **kwargs)
        return self.encode(text) if tokenize else text


class IncrementalDetokenizer:
    """Turn a stream of token ids into text deltas.

    Token bytes go through an incremental UTF-8 decoder, so a character split across tokens
    (CJK, emoji) is held back until its last byte arrives, and U+FFFD is only emitted for bytes
    that can never become valid. Cost per token is O(1), unlike re-decoding a growing suffix.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        if not tokenizer.is_byte_level:
            raise ValueError("IncrementalDetokenizer needs a byte-level BPE tokenizer (ByteLevel decoder)")
        self._tok = tokenizer
        self._skip = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self.token_ids: list[int] = []

    def add(self, token_id: int) -> str:
        """Feed one id; return the newly completed text (possibly empty)."""
        token_id = int(token_id)
        self.token_ids.append(token_id)
        if token_id in self._skip:
            return ""
        delta = self._decoder.decode(self._tok.token_bytes(token_id))
        if delta:
            self._parts.append(delta)
        return delta

    def add_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.add(i) for i in token_ids)

    def flush(self) -> str:
        """End of stream: bytes still held back can no longer complete, so they become U+FFFD."""
        delta = self._decoder.decode(b"", final=True)
        if delta:
            self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        return "".join(self._parts)
