"""The OpenAI-compatible HTTP server: thin FastAPI routes over the services, one continuous-batching scheduler
beneath them.

Routes: POST /v1/completions (streaming or not: completions.py), GET /v1/models, GET /health, GET /metrics,
POST /tokenize, POST /detokenize (tokens.py), POST /v1/extract (the mining pipeline's Extractor, run in the
scheduler's thread: extraction.py), POST /v1/embeddings (embeddings.py), the extraction page (page.py), and
/v1/chat/completions answering that BioGPT has no chat template. In front of them (middleware.py): the API key,
the body limit, 503 while loading or draining, and the OpenAI error envelope for every error. What the routes
share is the State (state.py); request bodies are protocol.py's.

A BiomedGPT (OFA) model is served by serve/ofa.py instead of the scheduler: /v1/completions (with an optional
base64 `image`, one request at a time), /v1/models, /tokenize, /detokenize; /v1/extract is BioGPT's. An `image`
sent to a text-only model is a 400.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from biogpt.api import family_of
from biogpt.errors import BioGPTError
from biogpt.mining.linking import Linker
from biogpt.serve import embeddings, middleware, page, tokens
from biogpt.serve.completions import Completions
from biogpt.serve.extraction import Extraction
from biogpt.serve.middleware import APIError
from biogpt.serve.protocol import CompletionRequest, DetokenizeRequest, ExtractRequest, TokenizeRequest
from biogpt.serve.state import State
from biogpt.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def create_app(
    model: torch.nn.Module | None = None,
    tok: Tokenizer | None = None,
    *,
    model_name: str = "biogpt",
    loader: Callable[[], tuple[torch.nn.Module, Tokenizer]] | None = None,
    api_key: str | None = None,
    max_batch: int = 32,
    max_queue: int = 256,
    prefill_chunk: int = 256,
    max_len: int | None = None,
    max_body: int = 1 << 20,
    model_info: dict | None = None,
    dictionaries: dict[str, Linker] | None = None,
) -> FastAPI:
    """The app over a loaded (model, tok), or over `loader()` run in a thread at startup (/health says 503 until
    it is done). `max_len`: tokens per sequence (prompt + output), the model's positions by default; the batch
    cache holds max_batch x max_len tokens. `dictionaries`: name -> linker, the dictionaries /v1/extract
    requests may name (clients never send paths)."""
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: give a key, or None to serve without one")
    options = dict(max_batch=max_batch, max_queue=max_queue, prefill_chunk=prefill_chunk, max_len=max_len)
    state = State(model_name, api_key, options)
    if model_info is not None:  # as `biogpt extract` records it, so the page's downloads equal its bytes
        state.model_info = model_info
    app = FastAPI(title="biogpt", lifespan=lifespan(state, model, tok, loader), docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.biogpt = state
    middleware.install(app, state, max_body)
    routes(app, state, Completions(state), Extraction(state, dictionaries))
    embeddings.register(app, state, APIError, state.check_model, state.off_loop)
    page.register(app, state, APIError, state.off_loop)
    return app


def lifespan(state: State, model, tok, loader):
    """Attach the given model at startup, or load it in a thread (the routes answer 503 meanwhile); stop the
    scheduler at shutdown."""

    def load() -> None:
        try:
            state.attach(*loader())
        except BioGPTError as e:  # a bad path, checkpoint or option: its message says what to do
            state.load_error = f"the model failed to load ({e})"
        except Exception as e:
            log.exception("loading the model failed")
            state.load_error = f"the model failed to load ({e})"

    @asynccontextmanager
    async def span(app: FastAPI):
        if model is not None:
            state.attach(model, tok)
        else:
            threading.Thread(target=load, name="biogpt-load", daemon=True).start()
        yield
        if state.scheduler is not None:
            state.scheduler.stop(timeout=5)  # the drain already waited --shutdown-timeout

    return span


def routes(app: FastAPI, state: State, completions: Completions, extraction: Extraction) -> None:
    """The OpenAI routes, each a call into its service."""

    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "error" if state.load_error else "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "biogpt",
                "max_model_len": state.max_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        return await tokens.tokenize(state, req)

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        return await tokens.detokenize(state, req)

    @app.api_route("/v1/chat/completions", methods=["POST", "GET"])
    async def chat():
        short = family_of(state.model).short if state.model is not None else "it"
        raise APIError(400, f"`{state.model_name}` has no chat template: {short} is a completion model, not a chat "
                            "model; send a text prompt to /v1/completions instead", param="messages")  # fmt: skip

    @app.post("/v1/completions")
    async def create_completion(req: CompletionRequest, request: Request):
        return await completions.create(req, request)

    @app.post("/v1/extract")
    async def extract(req: ExtractRequest, request: Request):
        return await extraction.extract(req, request)
