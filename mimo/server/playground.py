"""The chat page of ``mimo serve``: ``GET /`` (the page), ``GET /static/{name}`` (its script and style sheet)
and ``GET /v1/mimo/info`` (the defaults the page starts from).

The page is three files shipped in the package (``mimo/server/static``): nothing is fetched from anywhere
else, and nothing is built at install time. It talks to this server's own OpenAI endpoints and asks for
each token's MTP provenance with ``"mimo_provenance": true``.

``/`` and ``/static/*`` need no API key: they hold no secret, and a browser cannot send a bearer token when
it loads a page. ``/v1/mimo/info`` is under ``/v1`` and so needs the key like every API route; the page uses
its 401 to ask for the key.

Every file goes out with a Content-Security-Policy that allows script, style and connections from this
origin only (no inline script, no third-party origin, no plugins, no framing) and ``nosniff``; the page
renders model output as text only, so the policy is a second line of defence, not the first.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response

from mimo.server.serving import APIError, ServerContext

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_PUBLIC_PREFIX = "/static/"


def is_public(path: str | None) -> bool:
    """Whether ``path`` is part of the page and so served without the API key."""
    return path == "/" or (path or "").startswith(_PUBLIC_PREFIX)


def install(app: FastAPI, ctx: ServerContext) -> None:
    """Add the page's routes to ``app``."""
    static = resources.files("mimo.server") / "static"
    # Read once: a few kilobytes that cannot change while the package is installed.
    files = {name: (static / name).read_bytes() for name in ("index.html", *ASSETS)}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(files["index.html"], media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get(_PUBLIC_PREFIX + "{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise APIError(404, f"no such file: {_PUBLIC_PREFIX}{name}", code="not_found")
        return Response(files[name], media_type=ASSETS[name], headers=HEADERS)

    @app.get("/v1/mimo/info")
    async def info() -> Response:
        cfg = ctx.config
        return JSONResponse({
            "model": ctx.model_name,
            "max_model_len": ctx.max_model_len,
            "num_speculative_tokens": ctx.engine.num_speculative_tokens,
            # what a request that leaves these out gets (the model's generation_config.json, else OpenAI's)
            "sampling_defaults": {"temperature": cfg.default_temperature, "top_p": cfg.default_top_p,
                                  "top_k": cfg.default_top_k, "min_p": cfg.default_min_p,
                                  "repetition_penalty": cfg.default_repetition_penalty},
            "max_chat_tokens": cfg.max_chat_tokens,
            "thinking_default": False,  # chat_template_kwargs.enable_thinking when a request leaves it out
        })
