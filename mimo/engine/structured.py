"""Structured outputs: a request's tokens constrained by a JSON schema, a regex, an EBNF grammar or a structural
tag (vLLM's ``StructuredOutputsParams``), compiled and matched by xgrammar, the library vLLM and SGLang use.

A constrained sample keeps a :class:`Matcher` beside its slot's random generator: before each sampling its
grammar's allowed next tokens mask the logits (disallowed ones become -inf), after it the chosen token advances
the grammar. Logprobs stay those of the model (raw logits), as vLLM reports them by default. A constrained row
drafts like any other (MTP drafts are proposals): the verify step masks each position to what the grammar allows
after the drafts before it (the matcher walks them and is rolled back), so a draft the grammar refuses is
rejected, greedy output is the constrained plain greedy output, and rejection sampling stays exact (its target
is the masked distribution; the unmasked draft distribution is only the proposal).

The *structural tag* is what tool calling uses: free text until a trigger (``<tool_call>``), then one of the
offered calls with its arguments held to the tool's JSON schema (:func:`mimo.chat_format.tool_grammar`, the
llama.cpp server's "lazy grammar" and vLLM's ``tool_choice="required"`` in one mechanism).

xgrammar is an optional dependency (``pip install 'mimo[structured]'``; ``scripts/setup.sh`` installs it): it is
imported only when a constrained request arrives or a server enables tool-call grammars.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mimo.engine.params import StructuredOutputsParams
from mimo.tokenizer import Tokenizer

INSTALL_HINT = "structured outputs need xgrammar: pip install 'mimo[structured]'"


def available() -> bool:
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return False
    return True


class Grammars:
    """Compiles constraints for one tokenizer (xgrammar's ``GrammarCompiler``, most recent ``cache_size`` kept)
    and makes matchers. :meth:`compile` may be called from any thread (its cache is locked).
    ``vocab_size`` is the model's (its logits may be wider than the tokenizer's vocabulary); ``stop_ids`` end a
    constrained sequence once its grammar is complete (EOS, ``<|im_end|>``)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: Iterable[int], cache_size: int = 64) -> None:
        try:
            import xgrammar as xgr
        except ImportError as e:
            raise RuntimeError(INSTALL_HINT) from e
        self._xgr = xgr
        self.vocab_size = vocab_size
        self.stop_ids = frozenset(stop_ids)
        vocab = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.RAW, vocab_size=vocab_size,
                                 stop_token_ids=sorted(self.stop_ids) or None)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, spec: StructuredOutputsParams) -> Any:
        """The compiled constraint; ``ValueError`` naming what is wrong with it."""
        key = spec.key()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        kind, text = key
        c = self._compiler
        try:
            if kind == "json":
                compiled = c.compile_json_schema(text, any_whitespace=False)
            elif kind == "regex":
                compiled = c.compile_regex(text)
            elif kind == "grammar":
                compiled = c.compile_grammar(text)
            else:
                compiled = c.compile_structural_tag(text)
        except Exception as e:  # xgrammar raises RuntimeError / its own errors for bad schemas and grammars
            raise ValueError(f"structured outputs: invalid {kind.replace('_', ' ')}: {e}") from None
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, spec: StructuredOutputsParams, stop_ids: Iterable[int] = ()) -> Matcher:
        """A matcher at the grammar's start; ``stop_ids`` (the request's own stop tokens) end it too."""
        stops = sorted(self.stop_ids | set(stop_ids))
        return Matcher(self._xgr.GrammarMatcher(self.compile(spec), override_stop_tokens=stops), stops)

    def mask_(self, logits: torch.Tensor, rows: Sequence[tuple[int, Matcher, list[int]]]) -> None:
        """Mask ``logits [B, P, V]`` in place: for each ``(i, matcher, drafts)``, position ``p`` of row ``i`` to what
        the grammar allows after the row's first ``p`` drafts (a plain step: ``P = 1``, no drafts). The matcher walks
        the drafts and is rolled back. Positions past a draft the grammar refuses stay unmasked: that draft is
        rejected at its own, masked position, so nothing after it is used. One bitmask, one apply for the step."""
        if not rows:
            return
        xgr = self._xgr
        b, p, v = logits.shape
        bitmask = xgr.allocate_token_bitmask(b * p, self.vocab_size)
        filled: list[int] = []
        for i, m, drafts in rows:
            m.fill(bitmask, i * p)
            filled.append(i * p)
            walked = 0
            for d, t in enumerate(drafts):
                ok, advanced = m.advance(t)
                if not ok:
                    break
                walked += advanced
                m.fill(bitmask, i * p + d + 1)
                filled.append(i * p + d + 1)
            m.rollback(walked)
        xgr.apply_token_bitmask_inplace(logits.view(b * p, v), bitmask.to(logits.device), vocab_size=self.vocab_size,
                                        indices=filled)


class Matcher:
    """One constrained sample's position in its grammar. Once the grammar has ended (it accepted a stop token) a
    sample that goes on (``ignore_eos``) may only repeat stop tokens."""

    def __init__(self, matcher: Any, stop_ids: Sequence[int]) -> None:
        self._m = matcher
        self.stop_ids = list(stop_ids)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        if self.terminated:
            words = torch.zeros(bitmask.shape[1], dtype=torch.int64)  # bit t of word t // 32, as xgrammar packs
            for t in self.stop_ids:
                words[t // 32] |= 1 << (t % 32)
            bitmask[row] = words.to(torch.int32)  # wraps bit 31 to the sign bit, as the int32 mask holds it
            return
        self._m.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """Advance over a sampled token; False when the grammar refuses it (then the matcher stays put)."""
        return self.advance(token)[0]

    def advance(self, token: int) -> tuple[bool, int]:
        """(accepted, grammar steps taken: 0 for a stop token repeated after the end), for :meth:`rollback`."""
        if self.terminated:
            return token in self.stop_ids, 0
        ok = bool(self._m.accept_token(token))
        return ok, int(ok)

    def rollback(self, steps: int) -> None:
        if steps:
            self._m.rollback(steps)

    @property
    def terminated(self) -> bool:
        return bool(self._m.is_terminated())
