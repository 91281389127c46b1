"""What stands in front of every route: the OpenAI error envelope and its exception handlers, and `Guard`, the
ASGI middleware that counts requests, checks the API key, bounds the body and answers 503 while loading or
draining.

Every error is the OpenAI envelope {"error": {"message", "type", "param", "code"}}: 400 bad request, 401 API
key, 404 unknown model or route, 413 body too large, 429 queue full (Retry-After), 503 loading or draining, 500
a failure inside generation or anything unexpected (no traceback, no path).
"""

from __future__ import annotations

import json
import re
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from biogpt.errors import BioGPTError
from biogpt.serve import page
from biogpt.serve.protocol import error_body

OPEN_PATHS = ("/health", "/metrics", *page.FILES)  # no API key, and answered while draining
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/extract", "/health", "/metrics",
          "/tokenize", "/detokenize", "/v1/embeddings", "/v1/documents", "/")  # fmt: skip
SHUTDOWN = "the server shut down before this request finished (--shutdown-timeout); retry it"
INTERNAL = "the server failed on this request (an internal error, logged on the server)"
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate(body: bytes) -> bool:
    """Whether a JSON body holds an escaped lone surrogate ("\\ud800"): such a string cannot be encoded back to
    UTF-8 (an echo or a record would fail), so the request is refused. Pairs (escaped emoji) are fine."""
    if not _ESCAPED_SURROGATE.search(body):
        return False
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return False  # FastAPI reports it
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class APIError(Exception):
    """An answer a route gives up with: the handler turns it into the OpenAI envelope with this status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_response(status: int, message: str, type_: str, param: str | None = None, headers=None) -> JSONResponse:
    """The OpenAI envelope as a response, so that every error a client sees has one shape."""
    return JSONResponse(error_body(message, type_, status, param), status_code=status, headers=headers)


class Guard:
    """ASGI middleware in front of every route: request counting, API key (constant-time compare), body size
    limit (the whole body is read before the route sees it), and 503 while loading or draining."""

    def __init__(self, app, state, max_body: int):
        self.app, self.state, self.max_body = app, state, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.state.in_flight += 1
        try:
            await self._guarded(scope, receive, counting_send, path)
        finally:
            self.state.in_flight -= 1
            self.state.metrics.request(path if path in ROUTES else "other", status["code"])

    async def _guarded(self, scope, receive, send, path):
        """The open paths pass unchecked; every other one needs the key and a ready server."""
        refusal = self._refusal(scope) if path not in OPEN_PATHS else None
        if refusal is not None:
            return await refusal(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            return await self._with_body(scope, receive, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope) -> JSONResponse | None:
        """401 without the API key, 503 while loading or draining; None when the request may pass."""
        st = self.state
        if st.api_key is not None:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not secrets.compare_digest(given.encode(), st.api_key.encode()):
                return error_response(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                      "authentication_error")  # fmt: skip
        if st.draining or not st.ready:
            why = "the server is shutting down" if st.draining else (st.load_error or "the model is loading")
            return error_response(503, f"{why}; retry on another instance or later", "service_unavailable",
                                  headers={"Retry-After": "5"})  # fmt: skip
        return None

    async def _with_body(self, scope, receive, send):
        """Reads the whole body (413 past max_body, 400 for a lone surrogate), then hands it to the app."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        parts, size, more = [], 0, True  # joined once: a body trickled in tiny chunks costs linear time
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            parts.append(msg.get("body", b""))
            size += len(parts[-1])
            more = msg.get("more_body", False)
            if size > self.max_body:
                return await self._too_large(scope, receive, send)
        body = b"".join(parts)
        if lone_surrogate(body):
            resp = error_response(400, "the body holds a lone surrogate (an unpaired \\ud800-\\udfff escape): "
                                       "not valid Unicode text", "invalid_request_error")  # fmt: skip
            return await resp(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the client's disconnect, when it comes

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        """413, saying how to send less or allow more."""
        resp = error_response(413, f"the request body exceeds {self.max_body} bytes; send fewer or shorter "
                                   "prompts, documents or images per request, or start the server with a larger "
                                   "--max-body-mb (a base64 image is 4/3 of its file)",
                              "invalid_request_error")  # fmt: skip
        await resp(scope, receive, send)


def install(app: FastAPI, state, max_body: int) -> None:
    """Put Guard in front of the app and turn every exception into the envelope (a 500 without a traceback)."""
    app.add_middleware(Guard, state=state, max_body=max_body)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.type, e.param, e.headers)

    @app.exception_handler(BioGPTError)
    async def biogpt_error(request: Request, e: BioGPTError):
        return error_response(400, str(e), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        kind = first.get("type", "")
        msg = f"unknown field {where!r}" if kind == "extra_forbidden" else f"{where or 'body'}: {first.get('msg')}"
        return error_response(400, msg, "invalid_request_error", where or None)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, e: Exception):
        # the traceback goes to the server's log (Starlette re-raises after this response), never to the client
        return error_response(500, INTERNAL, "server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}", "not_found_error")
        return error_response(e.status_code, str(e.detail), "invalid_request_error")
