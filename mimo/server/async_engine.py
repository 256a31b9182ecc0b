"""Asyncio front end of the (thread-unsafe) :class:`mimo.engine.engine.Engine`: one stepping thread,
continuous batching, cancellation and the serving metrics.

Threading model. The engine is not thread-safe, so exactly one thread, the stepping thread, ever touches it.
The event loop talks to it through a command queue (add, abort, call) that the thread drains between two
steps; the thread hands results back with ``loop.call_soon_threadsafe``, once per step and event loop. So
requests join and leave the running batch between decode steps (continuous batching), and a client that
goes away aborts its request at the next step boundary, where its KV-cache slot is freed. A lock around
``engine.step()`` would be simpler, but every add or abort would then block the event loop for a whole step.

Failures. An exception raised by ``engine.step()`` cannot be pinned on one request, so every request in the
engine at that moment is aborted, released and failed with :class:`EngineError`; the thread then keeps
serving new requests. Bad input (``engine.add_request`` raising ``ValueError``) fails only that request.

Only the engine's public API is used (``add_request``, ``step``, ``abort``, ``output``, ``release``,
``has_unfinished``, ``num_running``, ``num_waiting``, ``cache_bytes_in_use``, ``max_model_len``, ``k``), so
tests can drive the server with a fake engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mimo.server.metrics import ACCEPTANCE_BUCKETS, LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry

if TYPE_CHECKING:
    from mimo.engine.engine import Engine
    from mimo.engine.outputs import RequestOutput, StreamDelta
    from mimo.engine.params import SamplingParams

logger = logging.getLogger(__name__)

STATUSES = ("finished", "aborted", "failed", "rejected", "queue_full")


class QueueFullError(RuntimeError):
    """Too many requests are waiting for a slot (the server answers 503)."""


class EngineError(RuntimeError):
    """A request failed inside the engine, or the engine is shut down (the server answers 500)."""


@dataclass
class _End:
    output: RequestOutput | None  # the engine's final RequestOutput (token counts, MTP statistics)


@dataclass(eq=False)
class _Tracked:
    """What the stepping thread knows of one admitted request."""

    request_id: str
    n: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    arrival: float
    first_token: float | None = None
    finished: set[int] = field(default_factory=set)  # sample indexes that reported a finish_reason


class EngineMetrics:
    """The engine-side series of ``/metrics``; the HTTP layer registers its own into :attr:`registry`."""

    def __init__(self, snapshot: Callable[[], tuple[int, int, int]]) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = r.register(Counter("mimo_requests_total", "Requests by outcome: finished, aborted (client left), "
                                           "failed (engine error), rejected (bad input: 4xx), queue_full.", ("status",),
                                           initial=[(s,) for s in STATUSES]))
        self.prompt_tokens = r.register(Counter("mimo_prompt_tokens_total", "Prompt tokens of admitted requests."))
        self.generation_tokens = r.register(Counter("mimo_generation_tokens_total", "Generated tokens."))
        r.register(Gauge("mimo_requests_running", "Sequences holding a KV-cache slot.", lambda: snapshot()[0]))
        r.register(Gauge("mimo_requests_waiting", "Sequences waiting for a KV-cache slot.", lambda: snapshot()[1]))
        r.register(Gauge("mimo_kv_cache_bytes_in_use", "KV-cache bytes held by running sequences.", lambda: snapshot()[2]))
        self.ttft = r.register(Histogram("mimo_time_to_first_token_seconds", "Arrival to first generated token.",
                                         LATENCY_BUCKETS))
        self.e2e = r.register(Histogram("mimo_e2e_request_latency_seconds", "Arrival to last token, finished requests.",
                                        LATENCY_BUCKETS))
        self.acceptance = r.register(Histogram("mimo_spec_acceptance_length", "Tokens per main-model decode step, per "
                                               "request (MTP speculative decoding; 1 without it).", ACCEPTANCE_BUCKETS))


class RequestStream:
    """The deltas of one admitted request, as an async iterator; :meth:`cancel` (or :meth:`aclose`) aborts it.

    Iteration ends after the last sample's final delta; :attr:`output` then holds the engine's final
    :class:`~mimo.engine.outputs.RequestOutput`. A failure inside the engine raises :class:`EngineError`.
    A consumer cancelled while waiting (client disconnect) aborts the request.
    """

    def __init__(self, owner: AsyncEngine, request_id: str, q: asyncio.Queue) -> None:
        self._owner, self.request_id, self._queue = owner, request_id, q
        self.output: RequestOutput | None = None
        self._done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StreamDelta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the consumer is gone
            self.cancel()
            raise
        if isinstance(item, _End):
            self._done, self.output = True, item.output
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """Abort the request unless it already ended (idempotent; safe to call from the event loop)."""
        if not self._done:
            self._done = True
            self._owner.abort(self.request_id)

    async def aclose(self) -> None:
        self.cancel()


class AsyncEngine:
    """Runs ``engine.step()`` in a background thread while there is work; see the module docstring."""

    def __init__(self, engine: Engine, max_waiting: int = 256) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
        # Sequences the server holds at once: those in a cache slot plus those allowed to wait for one.
        self.capacity = int(getattr(engine, "max_num_seqs", 0)) + max_waiting
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._tracked: dict[str, _Tracked] = {}  # stepping thread only
        self._count_lock = threading.Lock()
        self._pending_adds = 0  # sequences sent to the thread, not yet admitted: they count toward the capacity
        self._snapshot = (0, 0, 0)  # (running, waiting, cache bytes) after the thread's last iteration
        self._closed = False
        self.metrics = EngineMetrics(lambda: self._snapshot)
        self._thread = threading.Thread(target=self._run, name="mimo-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side
    @property
    def max_model_len(self) -> int:
        return int(self.engine.max_model_len)

    @property
    def vocab_size(self) -> int | None:
        """The model's vocabulary size, when the engine says (token-id prompts must lie below it)."""
        v = getattr(self.engine, "vocab_size", None)
        return None if v is None else int(v)

    @property
    def num_speculative_tokens(self) -> int:
        return int(getattr(self.engine, "k", 0))

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def stats(self) -> dict[str, int]:
        """The gauges as of the thread's last iteration (cheap; no round trip to the thread)."""
        running, waiting, cache = self._snapshot
        return {"running": running, "waiting": waiting, "cache_bytes_in_use": cache, "in_flight": len(self._tracked)}

    async def add(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        """Queue a request; returns once the engine admitted it (``ValueError`` for bad input).

        Raises :class:`QueueFullError` when its ``params.n`` sequences would leave more than ``max_waiting``
        sequences waiting for one of the engine's ``max_num_seqs`` slots, and :class:`EngineError` when the
        engine is shut down.
        """
        if not self.is_alive():
            raise EngineError("the engine is not running (the server is shutting down)")
        with self._count_lock:
            running, waiting, _ = self._snapshot
            if self._pending_adds + running + waiting + params.n > self.capacity:
                self.metrics.requests.inc(status="queue_full")
                raise QueueFullError(f"the server is at capacity ({running} sequences running, "
                                     f"{waiting + self._pending_adds} waiting); retry later")
            self._pending_adds += params.n
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        admitted = loop.create_future()
        rid = request_id or f"req-{uuid.uuid4().hex}"
        self._commands.put(("add", rid, prompt, params, loop, q, admitted, time.monotonic()))
        try:
            await admitted
        except asyncio.CancelledError:
            self.abort(rid)  # queued after the add, so the thread admits and then drops it
            raise
        return RequestStream(self, rid, q)

    def abort(self, request_id: str) -> None:
        """Abort and release a request at the next step boundary (thread-safe, non-blocking)."""
        self._commands.put(("abort", request_id))

    def call(self, fn: Callable[[Engine], Any]) -> concurrent.futures.Future:
        """Run ``fn(engine)`` on the stepping thread between steps (a thread-safe look inside the engine)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("call", fn, fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still in flight fail with :class:`EngineError`."""
        if self._closed:
            return
        self._closed = True
        self._commands.put(("stop",))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ stepping thread
    def _run(self) -> None:
        failures = 0  # consecutive failed iterations
        while True:
            ok = True
            try:
                if not self._drain(block=not self.engine.has_unfinished()):
                    self._fail_all("the server is shutting down")
                    return
                if self.engine.has_unfinished():
                    ok = self._step()
            except Exception:  # a bug in this module: fail what is in flight, keep the thread alive
                logger.exception("error in the engine thread")
                self._fail_all("internal error in the engine thread")
                ok = False
            failures = 0 if ok else failures + 1
            if failures:  # a persistently broken engine must not spin the CPU or flood the log
                time.sleep(min(0.01 * 2**failures, 1.0))
            try:
                self._snapshot = (self.engine.num_running, self.engine.num_waiting, self.engine.cache_bytes_in_use())
            except Exception:
                logger.exception("could not read the engine's gauges")

    def _drain(self, block: bool) -> bool:
        """Run the queued commands; wait for one first when ``block``. False when asked to stop."""
        try:
            cmd = self._commands.get() if block else self._commands.get_nowait()
        except queue.Empty:
            return True
        while True:
            kind = cmd[0]
            if kind == "stop":
                return False
            if kind == "add":
                self._admit(*cmd[1:])
            elif kind == "abort":
                self._abort(cmd[1])
            elif kind == "call":
                _, fn, fut = cmd
                try:
                    fut.set_result(fn(self.engine))
                except Exception as e:
                    fut.set_exception(e)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _admit(self, rid: str, prompt: str | list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop,
               q: asyncio.Queue, admitted: asyncio.Future, arrival: float) -> None:
        try:
            self.engine.add_request(prompt, params, rid)
        except Exception as e:
            with self._count_lock:
                self._pending_adds -= params.n
            if not isinstance(e, ValueError):  # bad input (ValueError) is counted by the HTTP layer as rejected
                self.metrics.requests.inc(status="failed")
                logger.exception("engine.add_request failed")
                e = EngineError(f"the engine could not take the request: {type(e).__name__}: {e}")
            self._resolve(loop, admitted, e)
            return
        with self._count_lock:  # moved from pending to waiting in one step, so add() never sees it in neither
            self._pending_adds -= params.n
            self._snapshot = (self._snapshot[0], self.engine.num_waiting, self._snapshot[2])
        n_prompt = len(prompt) if isinstance(prompt, list) else len(self.engine.output(rid).prompt_token_ids)
        self.metrics.prompt_tokens.inc(n_prompt)
        self._tracked[rid] = _Tracked(rid, params.n, loop, q, arrival)
        if not self._resolve(loop, admitted, None):
            self._abort(rid)

    def _resolve(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future, error: BaseException | None) -> bool:
        def settle() -> None:
            if fut.done():
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(None)

        try:
            loop.call_soon_threadsafe(settle)
            return True
        except RuntimeError:  # the caller's event loop is closed: nobody will read this request
            return False

    def _abort(self, rid: str) -> None:
        if rid in self._tracked:
            self._close(self._tracked[rid], None, "aborted", {})

    def _close(self, tr: _Tracked, item: Any, status: str, out: dict[asyncio.AbstractEventLoop, list]) -> None:
        """Forget a request in the engine and here; queue ``item`` (final marker or error) for its consumer."""
        self._tracked.pop(tr.request_id, None)
        try:
            self.engine.abort(tr.request_id)  # no-op once every sample finished
            self.engine.release(tr.request_id)
        except Exception:
            logger.exception("could not release request %s", tr.request_id)
        self.metrics.requests.inc(status=status)
        if item is not None:
            out.setdefault(tr.loop, []).append((tr.queue, item))

    def _step(self) -> bool:
        """One engine step and the delivery of its deltas; False when the step raised."""
        try:
            deltas = self.engine.step()
        except Exception as e:
            logger.exception("engine.step() failed; failing the %d request(s) in flight", len(self._tracked))
            self._fail_all(f"the engine failed while generating: {type(e).__name__}: {e}")
            return False
        now = time.monotonic()
        out: dict[asyncio.AbstractEventLoop, list] = {}
        m = self.metrics
        for d in deltas:
            tr = self._tracked.get(d.request_id)
            if tr is None:  # aborted earlier in this iteration
                continue
            if d.token_ids:
                m.generation_tokens.inc(len(d.token_ids))
                if tr.first_token is None:
                    tr.first_token = now
                    m.ttft.observe(now - tr.arrival)
            if d.error:
                self._close(tr, EngineError(f"the request failed in the engine: {d.error}"), "failed", out)
                continue
            out.setdefault(tr.loop, []).append((tr.queue, d))
            if d.finish_reason is not None:
                tr.finished.add(d.index)
                if len(tr.finished) >= tr.n:
                    output = self.engine.output(tr.request_id)
                    m.e2e.observe(now - tr.arrival)
                    if output.stats.decode_steps:
                        m.acceptance.observe(output.stats.acceptance_length)
                    self._close(tr, _End(output), "finished", out)
        self._send(out)
        return True

    def _fail_all(self, message: str) -> None:
        out: dict[asyncio.AbstractEventLoop, list] = {}
        for tr in list(self._tracked.values()):
            self._close(tr, EngineError(message), "failed", out)
        self._send(out)

    def _send(self, out: dict[asyncio.AbstractEventLoop, list]) -> None:
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: its requests have no reader any more
                for q, _ in items:
                    for tr in [t for t in self._tracked.values() if t.queue is q]:
                        self._close(tr, None, "aborted", {})


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)
