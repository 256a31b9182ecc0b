"""The OpenAI-compatible HTTP server: request/response models, output parsers and the FastAPI app.

* :mod:`mimo.server.protocol`: pydantic models for ``/v1/completions``, ``/v1/chat/completions`` and
  ``/v1/models``, their validation, and the OpenAI error body.
* :mod:`mimo.chat_format.parsers`: turns generated text into ``reasoning_content``, ``content`` and
  ``tool_calls``, whole or streamed (built on :mod:`mimo.chat_format.reasoning` and :mod:`mimo.chat_format.tool_calls`).

* :mod:`mimo.server.async_engine`: the engine's stepping thread (continuous batching, cancellation, metrics).
* :mod:`mimo.server.app`: the FastAPI app (auth, limits, errors) over :mod:`mimo.server.chat` and
  :mod:`mimo.server.completions`, which share :mod:`mimo.server.serving`; :mod:`mimo.server.metrics` is
  the Prometheus text format.

Protocol and parsers need only the standard library and pydantic, so they are tested without an engine;
the server uses only the engine's public API, so it runs on a fake engine too.
"""
