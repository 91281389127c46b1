"""The OpenAI-compatible HTTP server: FastAPI routes over one continuous-batching scheduler.

Routes: POST /v1/completions (streaming or not), GET /v1/models, GET /health, GET /metrics, POST /tokenize,
POST /detokenize, POST /v1/extract (the mining pipeline's Extractor, run in the scheduler's thread), and
/v1/chat/completions answering that BioGPT has no chat template. Every error is the OpenAI envelope
{"error": {"message", "type", "param", "code"}}: 400 bad request, 401 API key, 404 unknown model or route,
413 body too large, 429 queue full (Retry-After), 503 loading or draining, 500 a failure inside generation or
anything unexpected (no traceback, no path); a stream that fails ends with an error frame and `[DONE]`.

Nothing a client sends costs the event loop more than a few milliseconds: tokenization and detokenization of
more than INLINE_CHARS characters (or ids) and constraint compilation run in a worker thread (CPU_WORKERS at
once), generation and extraction in the scheduler's thread; large answers skip FastAPI's per-item encoder;
per-request limits (protocol.py) bound the work and memory of each.

A BiomedGPT (OFA) model is served by serve/ofa.py instead of the scheduler: /v1/completions (with an optional
base64 `image`, one request at a time), /v1/models, /tokenize, /detokenize; /v1/extract is BioGPT's. An `image`
sent to a text-only model is a 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from biogpt.api import family_of
from biogpt.errors import BioGPTError, GenerationError
from biogpt.generation.scheduler import Delta, QueueFull, SamplingParams, Scheduler, Seq
from biogpt.mining.extractor import Extractor
from biogpt.mining.generative import GenerativeExtractor
from biogpt.mining.linking import Linker, default_linker
from biogpt.mining.readers import Document, Passage, title_abstract
from biogpt.mining.writers import bioc_document, jsonl_line, pubtator_document
from biogpt.serve import embeddings, page
from biogpt.serve.metrics import Metrics
from biogpt.serve.protocol import (
    MAX_EXTRACT_CHARS,
    MAX_EXTRACT_DOCS,
    MAX_OFA_PROMPTS,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_STOP_TOKEN_IDS,
    CompletionRequest,
    DetokenizeRequest,
    ExtractRequest,
    TokenizeRequest,
    error_body,
)
from biogpt.serve.structured import RegexConstraint, RegexError, TokenIndex, choice_constraint, compile_regex
from biogpt.text import moses
from biogpt.text.tokenizer import Tokenizer

try:  # BiomedGPT's path needs the ofa extra (tokenizers, pillow); BioGPT and GPT-2 serve without it
    from biogpt.serve.ofa import OFACompletions, UnsupportedField
except ImportError:
    OFACompletions = UnsupportedField = None

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health", "/metrics", *page.FILES)  # no API key, and answered while draining
SHUTDOWN = "the server shut down before this request finished (--shutdown-timeout); retry it"
INTERNAL = "the server failed on this request (an internal error, logged on the server)"
CPU_WORKERS = 1  # long tokenizations etc. at once in worker threads: each competes with the loop for the GIL
INLINE_CHARS = 4096  # inputs up to this size are tokenized in the loop (about a millisecond)
DISCONNECT_CHECK_S = 0.25  # how often a non-streaming request looks for its client's disconnect
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
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_response(status: int, message: str, type_: str, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, status, param), status_code=status, headers=headers)


class State:
    """What the routes share: the model (once loaded), its scheduler, metrics, and whether we are draining."""

    def __init__(self, model_name: str, api_key: str | None, scheduler_options: dict):
        self.model_name = model_name
        self.model_info = {"name": model_name}  # written into /v1/extract's records (cli/serve.py adds sha256, dtype)
        self.api_key = api_key
        self.scheduler_options = scheduler_options
        self.model: torch.nn.Module | None = None
        self.tok: Tokenizer | None = None
        self.scheduler: Scheduler | None = None
        self.ofa: OFACompletions | None = None  # a BiomedGPT model: served without the scheduler
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0  # HTTP requests between arrival and their last byte (the drain waits for them)
        self.created = int(time.time())
        self._index: TokenIndex | None = None
        self.metrics = Metrics({
            "biogpt_queue_length": ("gauge", "Sequences waiting for a batch row.",
                                    lambda: self.scheduler.queue_length if self.scheduler else 0),
            "biogpt_running_batch_size": ("gauge", "Sequences in the decode batch.",
                                          lambda: self.scheduler.batch_size if self.scheduler else 0),
            "biogpt_prompt_tokens_total": ("counter", "Prompt tokens prefilled.",
                                           lambda: self.scheduler.tokens_in if self.scheduler else 0),
            "biogpt_generation_tokens_total": ("counter", "Tokens generated.",
                                               lambda: self.scheduler.tokens_out if self.scheduler else 0),
        })  # fmt: skip

    @property
    def ready(self) -> bool:
        return self.scheduler is not None or self.ofa is not None

    @property
    def max_len(self) -> int:
        return self.scheduler.max_len if self.scheduler is not None else self.model.config.max_positions

    def attach(self, model: torch.nn.Module, tok: Tokenizer) -> None:
        self.model, self.tok = model.eval(), tok
        desc = family_of(model)
        if desc.encoder_decoder:
            self.ofa = OFACompletions(model, tok)
            return
        ids = desc.special_ids(tok)  # the family's end and padding ids (BioMedLM: <|endoftext|> for both)
        self.scheduler = Scheduler(model, tok.decode, observe=self.metrics.observe, **ids, **self.scheduler_options)
        self.scheduler.start()

    @property
    def byte_level(self) -> bool:
        """A GPT-2 family model (BioMedLM) with its byte-level tokenizer, rather than BioGPT's Moses + BPE."""
        return family_of(self.model).byte_level

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of a text; `special`: with the leading </s> BioGPT's prompts start with (GPT-2 adds none)."""
        return self.tok.encode(text) if self.byte_level else self.tok.encode(text, add_eos_prefix=special)

    @property
    def token_index(self) -> TokenIndex:
        """The vocabulary as regex constraints need it, built on the first regex (in a worker thread)."""
        if self._index is None:
            self._index = TokenIndex(self.tok)
        return self._index


class Guard:
    """ASGI middleware in front of every route: request counting, API key (constant-time compare), body size
    limit (the whole body is read before the route sees it), and 503 while loading or draining."""

    def __init__(self, app, state: State, max_body: int):
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
        st = self.state
        if path not in OPEN_PATHS:
            if st.api_key is not None:
                headers = dict(scope["headers"])
                auth = headers.get(b"authorization", b"").decode("latin-1")
                given = auth[7:] if auth[:7].lower() == "bearer " else ""
                if not secrets.compare_digest(given.encode(), st.api_key.encode()):
                    resp = error_response(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                                          "authentication_error")  # fmt: skip
                    return await resp(scope, receive, send)
            if st.draining or not st.ready:
                why = "the server is shutting down" if st.draining else (st.load_error or "the model is loading")
                resp = error_response(503, f"{why}; retry on another instance or later", "service_unavailable",
                                      headers={"Retry-After": "5"})  # fmt: skip
                return await resp(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
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
        return await self.app(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        resp = error_response(413, f"the request body exceeds {self.max_body} bytes; send fewer or shorter "
                                   "prompts, documents or images per request, or start the server with a larger "
                                   "--max-body-mb (a base64 image is 4/3 of its file)",
                              "invalid_request_error")  # fmt: skip
        await resp(scope, receive, send)


ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/extract", "/health", "/metrics",
          "/tokenize", "/detokenize", "/v1/embeddings", "/v1/documents", "/")  # fmt: skip


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
    workers = asyncio.Semaphore(CPU_WORKERS)

    async def off_loop(fn, *args, size: int | None = None):
        """fn(*args) in a worker thread, at most CPU_WORKERS at once, so that the event loop keeps answering;
        inline when `size` (characters or ids to process) is at most INLINE_CHARS: short work does not queue."""
        if size is not None and size <= INLINE_CHARS:
            return fn(*args)
        async with workers:
            return await asyncio.to_thread(fn, *args)

    if model_info is not None:  # as `biogpt extract` records it, so the page's downloads equal its bytes
        state.model_info = model_info

    def load() -> None:
        try:
            state.attach(*loader())
        except BioGPTError as e:  # a bad path, checkpoint or option: its message says what to do
            state.load_error = f"the model failed to load ({e})"
        except Exception as e:
            log.exception("loading the model failed")
            state.load_error = f"the model failed to load ({e})"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if model is not None:
            state.attach(model, tok)
        else:
            threading.Thread(target=load, name="biogpt-load", daemon=True).start()
        yield
        if state.scheduler is not None:
            state.scheduler.stop(timeout=5)  # the drain already waited --shutdown-timeout

    app = FastAPI(title="biogpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.biogpt = state
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

    def check_model(name: str | None) -> None:
        if name is not None and name != state.model_name:
            raise APIError(404, f"the model `{name}` does not exist; this server serves `{state.model_name}`",
                           "not_found_error", "model")  # fmt: skip

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

    def tokenize_ids(req: TokenizeRequest) -> list[int]:
        if state.ofa is not None:  # BiomedGPT: <s> ... </s> around the text, as the encoder reads it
            return state.tok.encode_source(req.prompt) if req.add_special_tokens else state.tok.encode(req.prompt)
        return state.encode(req.prompt, req.add_special_tokens)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        check_model(req.model)
        ids = await off_loop(tokenize_ids, req, size=len(req.prompt))
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": state.max_len})

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        check_model(req.model)
        check_ids(req.tokens, "tokens")
        return JSONResponse({"prompt": await off_loop(state.tok.decode, req.tokens, size=len(req.tokens))})

    def check_ids(ids: list[int], param: str) -> None:
        V = state.tok.vocab_size
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{V - 1})", param=param)

    @app.api_route("/v1/chat/completions", methods=["POST", "GET"])
    async def chat():
        raise APIError(400, f"`{state.model_name}` has no chat template: BioGPT is a completion model, not a chat "
                            "model; send a text prompt to /v1/completions instead", param="messages")  # fmt: skip

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        if state.ofa is not None:
            if not isinstance(req.prompt, str) and len(req.prompt) > MAX_OFA_PROMPTS:
                raise APIError(400, f"{len(req.prompt)} prompts in one request; a BiomedGPT request takes at most "
                                    f"{MAX_OFA_PROMPTS} (one batch)", param="prompt")  # fmt: skip
            try:
                return await off_loop(state.ofa.complete, req, state.model_name)
            except UnsupportedField as e:
                raise APIError(400, str(e), param=e.param) from None
        if req.image is not None:
            raise APIError(400, f"`{state.model_name}` is a text-only model; `image` needs a BiomedGPT (OFA) model",
                           param="image")  # fmt: skip
        prompts, params = await off_loop(prepare, req, size=input_size(req))  # a regex compiles off the loop
        n = req.n
        all_prompts = [p for p in prompts for _ in range(n)]
        all_params = [params(j) for _ in prompts for j in range(n)]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Seq, Delta]] = asyncio.Queue()

        def on_delta(seq: Seq, delta: Delta) -> None:  # the scheduler's thread
            if not loop.is_closed():  # else the request is long gone
                loop.call_soon_threadsafe(queue.put_nowait, (seq, delta))

        try:
            seqs = state.scheduler.submit(all_prompts, all_params, on_delta)
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", headers={"Retry-After": "1"}) from None
        except GenerationError as e:
            raise APIError(400, str(e), param="max_tokens" if "max_tokens" in str(e) else None) from None
        index = {s.id: i for i, s in enumerate(seqs)}
        cid = f"cmpl-{uuid.uuid4().hex}"
        head = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": state.model_name}
        echoes = [echo_text(req, i) if req.echo else "" for i in range(len(prompts))]
        if req.stream:
            gen = stream(req, seqs, index, queue, head, echoes, n, sum(map(len, prompts)))
            return StreamingResponse(gen, media_type="text/event-stream")
        return await collect(req, request, seqs, index, queue, head, echoes, n, sum(map(len, prompts)))

    def prepare(req: CompletionRequest) -> tuple[list[list[int]], Callable[[int], SamplingParams]]:
        """The prompts' ids and the sampling settings; the settings' cheap limits are checked first."""
        params = sampling_params(req)
        return prompt_ids(req), params

    def prompt_ids(req: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt (a worker thread): at most max_queue sequences, each able to fit the context,
        both checked before any tokenization."""
        p = req.prompt
        count = 1 if isinstance(p, str) or (p and isinstance(p[0], int)) else len(p)
        if count * req.n > state.scheduler.max_queue:  # as a full queue (429), but before any tokenization
            raise APIError(429, f"{count} prompts x n={req.n} sequences in one request; the server queues at most "
                                f"{state.scheduler.max_queue}: send fewer per request", "rate_limit_error", "prompt",
                           headers={"Retry-After": "1"})  # fmt: skip
        if isinstance(p, str):
            out = [encode_prompt(p, req)]
        elif not p:
            raise APIError(400, "prompt is empty", param="prompt")
        elif all(isinstance(x, str) for x in p):
            out = [encode_prompt(x, req) for x in p]
        elif all(isinstance(x, int) for x in p):
            out = [list(p)]
        else:
            out = [list(x) for x in p]
        for ids in out:
            if not ids:
                raise APIError(400, "a token-id prompt is empty", param="prompt")
            check_ids(ids, "prompt")
        return out

    def input_size(req: CompletionRequest) -> int | None:
        """What preparing req costs, in characters or ids; None (always a worker) when it compiles a regex."""
        so = req.structured_outputs
        if so is not None and so.regex is not None:
            return None
        p = req.prompt
        size = len(p) if isinstance(p, str) else sum(len(x) if isinstance(x, (str, list)) else 1 for x in p)
        stop = [req.stop] if isinstance(req.stop, str) else req.stop or []
        return size + sum(map(len, stop)) + (sum(map(len, so.choice or [])) if so is not None else 0)

    def encode_prompt(text: str, req: CompletionRequest) -> list[int]:
        """The ids of one text prompt; a text that cannot fit the context is refused before Moses and BPE run."""
        least = getattr(state.tok, "min_tokens", None)
        if least is not None:
            need = least(text) + 1 + (req.max_tokens or 16)  # + the leading </s>
            if need > state.max_len:
                raise APIError(400, f"the prompt holds at least {need - 1 - (req.max_tokens or 16)} tokens; with "
                                    f"max_tokens it exceeds the model's context of {state.max_len} tokens",
                               param="prompt")  # fmt: skip
        return state.tok.encode(text)

    def echo_text(req: CompletionRequest, i: int) -> str:
        p = req.prompt
        if isinstance(p, str):
            return p
        if isinstance(p[0], str):
            return p[i]
        ids = p if isinstance(p[0], int) else p[i]
        return state.tok.decode(ids)

    def sampling_params(req: CompletionRequest) -> Callable[[int], SamplingParams]:
        if req.stop_token_ids:
            check_ids(req.stop_token_ids, "stop_token_ids")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if any(not s for s in stop):
            raise APIError(400, "stop strings must not be empty", param="stop")
        if len(stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise APIError(400, f"at most {MAX_STOP} stop strings of at most {MAX_STOP_CHARS} characters each",
                           param="stop")  # fmt: skip
        if len(req.stop_token_ids or ()) > MAX_STOP_TOKEN_IDS:
            raise APIError(400, f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids", param="stop_token_ids")
        beams = req.num_beams or (2 if req.use_beam_search else 1)
        if req.use_beam_search and beams < 2:
            raise APIError(400, "use_beam_search needs num_beams >= 2", param="num_beams")
        if beams > 1 and req.n > 1:
            raise APIError(400, "beam search returns one sequence per prompt here; use n=1", param="n")
        if beams > 1 and req.stream:
            raise APIError(400, "beam search cannot stream (the best beam is known only at the end)", param="stream")
        temperature = 0.0 if beams > 1 else (req.temperature if req.temperature is not None else 1.0)
        so = req.structured_outputs
        constraint = None  # choice and regex constraints keep no state between calls: one serves every row
        if so is not None:
            if (so.choice is None) == (so.regex is None):
                raise APIError(400, "structured_outputs takes exactly one of choice or regex",
                               param="structured_outputs")  # fmt: skip
            if so.choice is not None:
                if not so.choice:
                    raise APIError(400, "structured_outputs.choice is an empty list", param="structured_outputs")
                eos = state.tok.eos_token_id if state.byte_level else 2
                constraint = choice_constraint([state.encode(c, special=False) for c in so.choice], eos)
            else:
                if state.byte_level:
                    raise APIError(400, "structured_outputs.regex needs BioGPT's tokenizer; with a byte-level "
                                   "(GPT-2 family) model use structured_outputs.choice", param="structured_outputs")
                try:
                    constraint = RegexConstraint(compile_regex(so.regex, state.token_index), state.tok)
                except RegexError as e:
                    raise APIError(400, str(e), param="structured_outputs") from None

        def params(j: int) -> SamplingParams:
            return SamplingParams(
                max_tokens=req.max_tokens or 16, temperature=temperature, top_p=req.top_p or 1.0,
                top_k=max(0, req.top_k or 0), seed=None if req.seed is None else req.seed + j, stop=stop,
                stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=req.ignore_eos, logprobs=req.logprobs,
                prompt_logprobs=req.echo and req.logprobs is not None, min_tokens=req.min_tokens,
                repetition_penalty=req.repetition_penalty, constraint=constraint, num_beams=beams,
                length_penalty=req.length_penalty,
            )  # fmt: skip

        return params

    def token_text(t: int) -> str:
        if state.byte_level:  # GPT-2 family: the token's own text (bytes of a split character decode as U+FFFD)
            return state.tok.decode([t], skip_special_tokens=False)
        p = state.tok.pieces[t]
        return p[:-2] if p.endswith("@@") else p

    def logprobs_block(tokens, lps, tops, offset: int, text_len: list[int]) -> dict:
        return {"tokens": [token_text(t) for t in tokens], "token_logprobs": lps,
                "top_logprobs": [{token_text(k): v for k, v in top.items()} if top is not None else None
                                 for top in tops],
                "text_offset": [offset + x for x in text_len]}  # fmt: skip

    def search_text(t: int) -> str:
        """The characters token t contributes to decoded text, as far as they can be told alone ("" for a special
        token): Moses escapes undone."""
        if state.byte_level:
            return token_text(t)
        if t < 4:
            return ""
        p = token_text(t)
        return "-" if p == "@-@" else moses.unescape(p)

    def text_offsets(toks: list[int]) -> list[int]:
        """len(decode(toks[:i])) for every i, in linear time: the end of each token's text, found in decode(toks)
        just after the previous token's (a token whose text is not found there, a rewritten one, moves nothing)."""
        full, out, pos = state.tok.decode(toks), [], 0
        for t in toks:
            out.append(pos)
            piece = search_text(t)
            at = full.find(piece, pos, pos + len(piece) + 8) if piece else -1
            if at >= 0:
                pos = at + len(piece)
        return out

    def prompt_block(seq: Seq) -> dict:
        toks = seq.prompt
        tops = [None] + (seq.prompt_top or [{}] * len(toks))[1:]
        return logprobs_block(toks, seq.prompt_logprobs or [None] * len(toks), tops, 0, text_offsets(toks))

    async def collect(req, request, seqs, index, queue, head, echoes, n, prompt_tokens) -> JSONResponse:
        per = {s.id: {"text": "", "tokens": [], "lps": [], "tops": [], "finish": None, "stop": None} for s in seqs}
        left = len(seqs)
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while left:
                try:
                    seq, d = await asyncio.wait_for(queue.get(), DISCONNECT_CHECK_S)
                except asyncio.TimeoutError:
                    seq = d = None
                if loop.time() - checked >= DISCONNECT_CHECK_S:  # also while deltas keep coming (a busy server)
                    checked = loop.time()
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                if d is None:
                    continue
                acc = per[seq.id]
                acc["text"] += d.text
                acc["tokens"] += d.tokens
                acc["lps"] += d.logprobs
                acc["tops"] += d.top
                if d.finish_reason is not None:
                    if d.finish_reason == "error":
                        raise APIError(500, d.error or "generation failed", "server_error")
                    if d.finish_reason == "cancelled":
                        raise APIError(503, SHUTDOWN, "service_unavailable")
                    acc["finish"], acc["stop"] = d.finish_reason, d.stop_reason
                    left -= 1
        finally:
            state.scheduler.cancel([s for s in seqs if not s.finished])
        choices = []
        for s in seqs:
            acc, i = per[s.id], index[s.id]
            echo = echoes[i // n]
            lp = None
            if req.logprobs is not None:
                lp = logprobs_block(acc["tokens"], acc["lps"], acc["tops"], len(echo), text_offsets(acc["tokens"]))
                if req.echo:
                    pb = prompt_block(s)
                    lp = {k: pb[k] + lp[k] for k in lp}
            choices.append({"index": i, "text": echo + acc["text"], "logprobs": lp, "finish_reason": acc["finish"],
                            "stop_reason": acc["stop"]})  # fmt: skip
        completion = sum(len(per[s.id]["tokens"]) for s in seqs)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}  # fmt: skip
        return JSONResponse({**head, "choices": choices, "usage": usage})

    async def stream(req, seqs, index, queue, head, echoes, n, prompt_tokens) -> AsyncIterator[str]:
        def frame(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def echo_frame(s: Seq) -> str:
            i = index[s.id]
            lp = prompt_block(s) if req.logprobs is not None else None
            return frame({**head, "choices": [{"index": i, "text": echoes[i // n], "logprobs": lp,
                                               "finish_reason": None}]})  # fmt: skip

        left = len(seqs)
        completion = 0
        sent_len = {s.id: len(echoes[index[s.id] // n]) for s in seqs}
        # with logprobs, a prompt's echo waits for its prefill (its first delta): its log-probabilities come with it
        pending_echo = {s.id for s in seqs} if req.echo and req.logprobs is not None else set()
        try:
            if req.echo and req.logprobs is None:
                for s in seqs:
                    yield echo_frame(s)
            failed = False
            while left and not failed:
                for seq, d in await coalesced(queue):
                    i = index[seq.id]
                    if seq.id in pending_echo and d.finish_reason not in ("error", "cancelled"):
                        pending_echo.discard(seq.id)
                        yield echo_frame(seq)
                    if d.finish_reason in ("error", "cancelled"):  # cancelled here: by the server's shutdown
                        if d.finish_reason == "error":
                            yield frame(error_body(d.error or "generation failed", "server_error", 500))
                        else:
                            yield frame(error_body(SHUTDOWN, "service_unavailable", 503))
                        failed = True
                        break
                    completion += len(d.tokens)
                    lp = None
                    if req.logprobs is not None and d.tokens:
                        lp = logprobs_block(d.tokens, d.logprobs, d.top, sent_len[seq.id], [0] * len(d.tokens))
                    sent_len[seq.id] += len(d.text)
                    finish = d.finish_reason if d.finish_reason in ("stop", "length") else None
                    if d.finish_reason is not None:
                        left -= 1
                    if d.text or d.tokens or finish:
                        choice = {"index": i, "text": d.text, "logprobs": lp, "finish_reason": finish}
                        if finish is not None:
                            choice["stop_reason"] = d.stop_reason
                        yield frame({**head, "choices": [choice]})
            if req.stream_options is not None and req.stream_options.include_usage:
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                         "total_tokens": prompt_tokens + completion}  # fmt: skip
                yield frame({**head, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        except Exception:  # the response has started: the failure goes into the stream, which still ends
            log.exception("a completion stream failed")
            yield frame(error_body(INTERNAL, "server_error", 500))
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: its sequences stop and free their rows
            state.scheduler.cancel([s for s in seqs if not s.finished])

    async def coalesced(queue: asyncio.Queue) -> list[tuple[Seq, Delta]]:
        """The next delta, merged per sequence with any others already waiting: when the loop falls behind the
        scheduler, one frame carries several tokens instead of one frame each."""
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        merged: dict[int, tuple[Seq, Delta]] = {}
        for seq, d in items:
            if seq.id not in merged:
                merged[seq.id] = (seq, Delta(text=d.text, tokens=list(d.tokens), logprobs=list(d.logprobs),
                                             top=list(d.top), finish_reason=d.finish_reason,
                                             stop_reason=d.stop_reason, error=d.error))  # fmt: skip
                continue
            m = merged[seq.id][1]
            m.text += d.text
            m.tokens += d.tokens
            m.logprobs += d.logprobs
            m.top += d.top
            m.finish_reason, m.stop_reason, m.error = d.finish_reason, d.stop_reason, d.error
        return list(merged.values())

    loaded = dict(dictionaries or {})
    defaults: dict[str, Linker | None] = {}

    def extract_linker(req: ExtractRequest) -> Linker | None:
        """The request's dictionary: one the server was started with, by name, or the task's default."""
        if not req.link:
            if req.linked or req.dictionary is not None:
                raise APIError(400, "`link: false` turns linking off; drop `dictionary` and `linked`", param="link")
            return None
        if req.dictionary is not None:
            if req.dictionary not in loaded:
                have = ", ".join(sorted(loaded)) or "none (start it with biogpt serve --dictionary NAME=FILE)"
                raise APIError(400, f"unknown dictionary; this server has: {have}", param="dictionary")
            linker = loaded[req.dictionary]
        else:
            if req.task not in defaults:
                defaults[req.task] = default_linker(req.task)
            linker = defaults[req.task]
        if req.linked and (not req.grounded or linker is None):
            raise APIError(400, "`linked` needs `grounded: true` and a dictionary for the task", param="linked")
        return linker

    @app.post("/v1/extract")
    async def extract(req: ExtractRequest, request: Request):
        check_model(req.model)
        if state.ofa is not None:
            raise APIError(400, "/v1/extract runs BioGPT's task models; this server serves a BiomedGPT model")
        if len(req.documents) > MAX_EXTRACT_DOCS:
            raise APIError(400, f"{len(req.documents)} documents in one request; send at most {MAX_EXTRACT_DOCS}",
                           param="documents")  # fmt: skip
        chars = sum(len(x or "") for d in req.documents for x in (d.id, d.text, d.title, d.abstract, d.question))
        if chars > MAX_EXTRACT_CHARS:
            raise APIError(400, f"the documents hold {chars} characters; one request takes at most "
                                f"{MAX_EXTRACT_CHARS}", param="documents")  # fmt: skip
        docs = []
        for d in req.documents:
            if d.text is not None and (d.title is not None or d.abstract is not None):
                raise APIError(400, f"document {d.id!r}: give either text or title + abstract", param="documents")
            if d.text is not None:
                docs.append(Document(d.id, [Passage("text", 0, d.text)], question=d.question))
            elif d.title is not None or d.abstract is not None:
                docs.append(title_abstract(d.id, d.title or "", d.abstract or "", question=d.question))
            else:
                raise APIError(400, f"document {d.id!r} has no text (give text, or title and abstract)",
                               param="documents")  # fmt: skip
        linker = extract_linker(req)
        try:
            if state.byte_level:  # BioMedLM: PubMedQA in the generative format, as `biogpt extract`
                ex = GenerativeExtractor(state.model, state.tok, req.task, model_info=state.model_info)
            else:
                ex = Extractor(state.model, state.tok, req.task, grounded=req.grounded,
                               model_info=state.model_info, linker=linker, linked=req.linked)  # fmt: skip
        except (BioGPTError, ValueError) as e:
            raise APIError(400, str(e), param="task") from None
        records = await run_extraction(ex, docs, request)
        if records is None:
            return JSONResponse({}, status_code=499)
        if req.format == "jsonl":
            data = "".join(jsonl_line(r) for r in records)
        elif req.format == "bioc_json":
            data = [bioc_document(r) for r in records]
        else:
            data = "".join(pubtator_document(r) for r in records)
        return JSONResponse({"object": "extraction", "model": state.model_name, "task": req.task,
                             "format": req.format, "records": records, "data": data})  # fmt: skip

    async def run_extraction(ex, docs: list[Document], request: Request) -> list[dict] | None:
        """ex.extract over docs in the scheduler's thread, one batch of documents per call so that decoding
        steps of other requests run in between; the documents hold queue places until done (429 when the queue
        has no room), and a client that went away stops it between batches (None)."""
        sch, size = state.scheduler, max(1, getattr(ex, "batch_size", 8))
        try:
            sch.reserve(len(docs))
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", headers={"Retry-After": "1"}) from None
        try:
            records: list[dict] = []
            for b in range(0, len(docs), size):
                if await request.is_disconnected():
                    return None
                part = docs[b : b + size]
                records += await asyncio.wrap_future(sch.call(lambda part=part: ex.extract(part)))
            return records
        finally:
            sch.release(len(docs))

    embeddings.register(app, state, APIError, check_model, off_loop)
    page.register(app, state, APIError, off_loop)
    return app
