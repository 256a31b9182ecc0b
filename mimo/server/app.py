"""The FastAPI application of ``mimo serve``: routes, API-key check, body limits and OpenAI-shaped errors.

Routes: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/completions`` (:mod:`mimo.server.completions`),
``POST /v1/chat/completions`` (:mod:`mimo.server.chat`), ``GET /health`` and ``GET /metrics`` (Prometheus), and
the chat page: ``GET /``, ``GET /static/{name}`` and ``GET /v1/mimo/info`` (:mod:`mimo.server.playground`).

Every error, including FastAPI's own (unknown route, wrong method, validation), is answered in OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad JSON, bad UTF-8, bad parameters and
prompts that do not fit the context (FastAPI's 422 becomes 400, as in OpenAI's API), 415 for a body sent with a
``Content-Type`` other than JSON (none at all is taken as JSON), 401 without the right
``Authorization: Bearer KEY`` (every route but ``/health`` and the page's ``/`` and ``/static/*`` when the
server has a key), 404 for an unknown model or route, 413 for a body over :attr:`ServerConfig.max_body_bytes`
(by ``Content-Length`` before reading, and by the bytes actually read), 503 with ``Retry-After`` when the
engine's waiting queue is full, 500 when the engine fails (the server keeps serving). A 4xx answer to a
generation route counts as a rejected request in ``/metrics``.

Request bodies are parsed here rather than by FastAPI's body injection, so that the limit applies while
reading and every failure gets a precise message.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mimo.server.async_engine import AsyncEngine
from mimo.server.chat import create_chat_completion
from mimo.server.completions import create_completion
from mimo.server.metrics import Counter
from mimo.server.playground import install as install_playground
from mimo.server.playground import is_public
from mimo.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    error_body,
    validation_error_body,
)
from mimo.server.serving import APIError, ServerConfig, ServerContext
from mimo.tokenizer import Tokenizer

__all__ = ["APIError", "ServerConfig", "build_app"]

R = TypeVar("R", bound=BaseModel)
_UNAUTHENTICATED = frozenset({"/health"})
_TYPES = {401: "authentication_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 503: "server_overloaded"}


def build_app(async_engine: AsyncEngine, tokenizer: Tokenizer, model_name: str, api_key: str | None = None,
              max_model_len: int | None = None, config: ServerConfig | None = None) -> FastAPI:
    """The OpenAI-compatible app over a running :class:`AsyncEngine`.

    ``max_model_len`` (prompt + completion tokens) defaults to the engine's and cannot exceed it.
    """
    config = config or ServerConfig()
    limit = min(max_model_len or async_engine.max_model_len, async_engine.max_model_len)
    end_ids = tuple(i for i in (tokenizer.token_to_id("<|im_end|>"),) if i is not None)
    ctx = ServerContext(async_engine, tokenizer, model_name, limit, config, end_ids,
                        max_token_bytes=tokenizer.max_token_bytes(), vocab_size=async_engine.vocab_size)
    registry = async_engine.metrics.registry
    responses = registry.register(Counter("mimo_http_responses_total", "HTTP responses by status code.", ("code",)))

    app = FastAPI(title="mimo", summary="OpenAI-compatible API for MiMo-V2-Flash models")
    app.state.ctx = ctx
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=config.max_body_bytes, responses=responses)
    _install_error_handlers(app, async_engine)

    @app.get("/health")
    async def health() -> Response:
        if not async_engine.is_alive():
            return JSONResponse(error_body("the engine thread is not running", "server_error"), 503)
        return JSONResponse({"status": "ok", **async_engine.stats()})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(registry.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def card() -> ModelCard:
        return ModelCard(id=model_name, root=model_name, max_model_len=limit)

    @app.get("/v1/models")
    async def list_models() -> Response:
        return JSONResponse(ModelList(data=[card()]).model_dump(mode="json"))

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        ctx.check_model(model_id)
        return JSONResponse(card().model_dump(mode="json"))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await _parse(request, CompletionRequest, ctx)
        return await create_completion(ctx, req, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await _parse(request, ChatCompletionRequest, ctx)
        return await create_chat_completion(ctx, req, request)

    install_playground(app, ctx)
    app.router.on_shutdown.append(lambda: ctx.workers.shutdown(wait=False, cancel_futures=True))
    return app


_JSON_TYPES = ("application/json",)
_LARGE_BODY = 256 * 1024  # decoded and validated on a worker thread above this size


async def _parse(request: Request, model: type[R], ctx: ServerContext) -> R:
    """Read (at most the body limit), decode and validate a JSON request body."""
    kind = request.headers.get("content-type")
    if kind is not None:
        media = kind.split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise APIError(415, f"unsupported Content-Type {media!r}: send the JSON body with "
                                "'Content-Type: application/json'", code="unsupported_media_type")
    max_bytes = ctx.config.max_body_bytes
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is larger than the limit of {max_bytes} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if len(body) > _LARGE_BODY:  # a 4 MiB body takes tens of milliseconds to decode: not on the event loop
        return await ctx.off_loop(_decode, body, model)
    return _decode(body, model)


def _decode(body: bytes, model: type[R]) -> R:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got a JSON {type(data).__name__}")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone "\ud800"-style escape: valid JSON, but not Unicode text
        raise APIError(400, "the request body contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    except (RecursionError, ValueError):
        raise APIError(400, "the request body is nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise APIError(400, **_validation_fields(e.errors())) from None


def _validation_fields(errors: Any) -> dict[str, Any]:
    err = validation_error_body(errors)["error"]
    return {"message": err["message"], "param": err["param"]}


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


_GENERATION_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})


def _install_error_handlers(app: FastAPI, engine: AsyncEngine) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        if 400 <= exc.status < 500 and request.url.path in _GENERATION_ROUTES:
            engine.metrics.requests.inc(status="rejected")  # bad input, before or at admission
        return _error_response(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(400, validation_error_body(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        body = error_body(message, _TYPES.get(exc.status_code, "invalid_request_error"), code=code)
        return _error_response(exc.status_code, body, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        return _error_response(500, error_body(f"internal server error: {type(exc).__name__}", "server_error"))


class _Guard:
    """ASGI middleware: API key and ``Content-Length`` checks before any route runs; counts responses by status.

    Plain ASGI rather than ``BaseHTTPMiddleware``, which would buffer streamed responses and hide client
    disconnects from them.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int, responses: Counter) -> None:
        self.app, self.api_key, self.max_body_bytes, self.responses = app, api_key, max_body_bytes, responses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.responses.inc(code=str(message["status"]))
            await send(message)

        error = self._check(scope)
        if error is not None:
            headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
            await _error_response(error.status, error.body(), headers)(scope, receive, counting_send)
            return
        await self.app(scope, receive, counting_send)

    def _check(self, scope: Scope) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path")
        if self.api_key is not None and path not in _UNAUTHENTICATED and not is_public(path):
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if not auth:
                return APIError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                                "authentication_error", code="invalid_api_key")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return APIError(401, "incorrect API key provided", "authentication_error", code="invalid_api_key")
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return APIError(400, f"invalid Content-Length header {length!r}")
            if int(length) > self.max_body_bytes:
                return APIError(413, f"the request body ({int(length)} bytes) is larger than the limit of "
                                     f"{self.max_body_bytes} bytes", code="request_too_large")
        return None
