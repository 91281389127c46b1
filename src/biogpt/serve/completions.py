"""POST /v1/completions: a request's prompts go to the scheduler, and its deltas come back as one OpenAI JSON
answer (`collect`) or as server-sent events (`stream`).

A failure inside generation is a 500 (a stream that fails ends with an error frame and `[DONE]`); a sequence the
server's shutdown cancelled is a 503. A client that goes away stops its sequences and frees their rows. A
BiomedGPT (OFA) model is answered by serve/ofa.py instead (one request at a time, in a worker thread).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from biogpt.errors import GenerationError
from biogpt.generation.scheduler import Delta, QueueFull, Seq
from biogpt.serve.middleware import INTERNAL, SHUTDOWN, APIError
from biogpt.serve.protocol import MAX_OFA_PROMPTS, CompletionRequest, error_body
from biogpt.serve.sampling import echo_text, input_size, prepare
from biogpt.serve.state import State
from biogpt.serve.tokens import logprobs_block, prompt_block, text_offsets

try:  # BiomedGPT's path needs the ofa extra (tokenizers, pillow); BioGPT and GPT-2 serve without it
    from biogpt.serve.ofa import UnsupportedField
except ImportError:
    UnsupportedField = None

log = logging.getLogger(__name__)
DISCONNECT_CHECK_S = 0.25  # how often a non-streaming request looks for its client's disconnect


@dataclass
class Submitted:
    """One request's sequences in the scheduler, and what its answer needs besides their deltas."""

    req: CompletionRequest
    seqs: list[Seq]
    index: dict[int, int]  # sequence id -> choice index
    queue: asyncio.Queue  # (Seq, Delta) pairs, put by the scheduler's thread
    head: dict  # id, object, created, model: the same in every frame
    echoes: list[str]  # per prompt: its text when `echo`, else ""
    prompt_tokens: int

    def echo(self, s: Seq) -> str:
        return self.echoes[self.index[s.id] // self.req.n]

    def usage(self, completion: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}  # fmt: skip


class Completions:
    """The completions service over the server's State."""

    def __init__(self, state: State):
        self.state = state

    async def create(self, req: CompletionRequest, request: Request):
        """The answer to one request: JSON, an SSE stream, or an APIError."""
        st = self.state
        st.check_model(req.model)
        if st.ofa is not None:
            return await self._ofa(req)
        if req.image is not None:
            raise APIError(400, f"`{st.model_name}` is a text-only model; `image` needs a BiomedGPT (OFA) model",
                           param="image")  # fmt: skip
        prompts, params = await st.off_loop(prepare, st, req, size=input_size(req))  # a regex compiles off the loop
        sub = self._submit(req, prompts, params)
        if req.stream:
            return StreamingResponse(self.stream(sub), media_type="text/event-stream")
        return await self.collect(sub, request)

    async def _ofa(self, req: CompletionRequest) -> dict:
        """A BiomedGPT request: one batch of prompts, beam search in a worker thread (serve/ofa.py)."""
        if not isinstance(req.prompt, str) and len(req.prompt) > MAX_OFA_PROMPTS:
            raise APIError(400, f"{len(req.prompt)} prompts in one request; a BiomedGPT request takes at most "
                                f"{MAX_OFA_PROMPTS} (one batch)", param="prompt")  # fmt: skip
        try:
            return await self.state.off_loop(self.state.ofa.complete, req, self.state.model_name)
        except UnsupportedField as e:
            raise APIError(400, str(e), param=e.param) from None

    def _submit(self, req: CompletionRequest, prompts: list[list[int]], params) -> Submitted:
        """Every prompt's n sequences into the scheduler, their deltas onto a queue of this event loop."""
        st, n = self.state, req.n
        all_prompts = [p for p in prompts for _ in range(n)]
        all_params = [params(j) for _ in prompts for j in range(n)]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Seq, Delta]] = asyncio.Queue()

        def on_delta(seq: Seq, delta: Delta) -> None:  # the scheduler's thread
            if not loop.is_closed():  # else the request is long gone
                loop.call_soon_threadsafe(queue.put_nowait, (seq, delta))

        try:
            seqs = st.scheduler.submit(all_prompts, all_params, on_delta)
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", headers={"Retry-After": "1"}) from None
        except GenerationError as e:
            raise APIError(400, str(e), param="max_tokens" if "max_tokens" in str(e) else None) from None
        index = {s.id: i for i, s in enumerate(seqs)}
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": st.model_name}  # fmt: skip
        echoes = [echo_text(st, req, i) if req.echo else "" for i in range(len(prompts))]
        return Submitted(req, seqs, index, queue, head, echoes, sum(map(len, prompts)))

    async def collect(self, sub: Submitted, request: Request) -> JSONResponse:
        """The non-streaming answer: every sequence's deltas gathered (499 when the client went away)."""
        per = {s.id: {"text": "", "tokens": [], "lps": [], "tops": [], "finish": None, "stop": None}
               for s in sub.seqs}  # fmt: skip
        try:
            if not await self._gather(sub, request, per):
                return JSONResponse({}, status_code=499)
        finally:
            self.state.scheduler.cancel([s for s in sub.seqs if not s.finished])
        choices = [self._choice(sub, s, per[s.id]) for s in sub.seqs]
        completion = sum(len(per[s.id]["tokens"]) for s in sub.seqs)
        return JSONResponse({**sub.head, "choices": choices, "usage": sub.usage(completion)})

    async def _gather(self, sub: Submitted, request: Request, per: dict[int, dict]) -> bool:
        """Deltas into `per` until every sequence finished; False when the client disconnected first."""
        left = len(sub.seqs)
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while left:
            try:
                seq, d = await asyncio.wait_for(sub.queue.get(), DISCONNECT_CHECK_S)
            except asyncio.TimeoutError:
                seq = d = None
            if loop.time() - checked >= DISCONNECT_CHECK_S:  # also while deltas keep coming (a busy server)
                checked = loop.time()
                if await request.is_disconnected():
                    return False
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
        return True

    def _choice(self, sub: Submitted, s: Seq, acc: dict) -> dict:
        """One finished sequence's choice, with its echo and logprobs block."""
        st, req, echo = self.state, sub.req, sub.echo(s)
        lp = None
        if req.logprobs is not None:
            lp = logprobs_block(st, acc["tokens"], acc["lps"], acc["tops"], len(echo), text_offsets(st, acc["tokens"]))
            if req.echo:
                pb = prompt_block(st, s)
                lp = {k: pb[k] + lp[k] for k in lp}
        return {"index": sub.index[s.id], "text": echo + acc["text"], "logprobs": lp, "finish_reason": acc["finish"],
                "stop_reason": acc["stop"]}  # fmt: skip

    async def stream(self, sub: Submitted) -> AsyncIterator[str]:
        """The SSE frames: deltas as they come (merged when the loop falls behind), usage when asked, `[DONE]`."""
        req = sub.req
        try:
            if req.echo and req.logprobs is None:
                for s in sub.seqs:
                    yield self._echo_frame(sub, s)
            completion = 0
            async for out, tokens in self._frames(sub):
                completion += tokens
                if out:
                    yield out
            if req.stream_options is not None and req.stream_options.include_usage:
                yield frame({**sub.head, "choices": [], "usage": sub.usage(completion)})
            yield "data: [DONE]\n\n"
        except Exception:  # the response has started: the failure goes into the stream, which still ends
            log.exception("a completion stream failed")
            yield frame(error_body(INTERNAL, "server_error", 500))
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: its sequences stop and free their rows
            self.state.scheduler.cancel([s for s in sub.seqs if not s.finished])

    async def _frames(self, sub: Submitted) -> AsyncIterator[tuple[str, int]]:
        """(frame, tokens it carries) until every sequence finished or one failed (its error frame last)."""
        req, left = sub.req, len(sub.seqs)
        sent_len = {s.id: len(sub.echo(s)) for s in sub.seqs}
        # with logprobs, a prompt's echo waits for its prefill (its first delta): its log-probabilities come with it
        pending_echo = {s.id for s in sub.seqs} if req.echo and req.logprobs is not None else set()
        while left:
            for seq, d, rel in await coalesced(sub.queue):
                if seq.id in pending_echo and d.finish_reason not in ("error", "cancelled"):
                    pending_echo.discard(seq.id)
                    yield self._echo_frame(sub, seq), 0
                if d.finish_reason in ("error", "cancelled"):  # cancelled here: by the server's shutdown
                    if d.finish_reason == "error":
                        yield frame(error_body(d.error or "generation failed", "server_error", 500)), 0
                    else:
                        yield frame(error_body(SHUTDOWN, "service_unavailable", 503)), 0
                    return
                lp = None
                if req.logprobs is not None and d.tokens:
                    lp = logprobs_block(self.state, d.tokens, d.logprobs, d.top, sent_len[seq.id], rel)
                sent_len[seq.id] += len(d.text)
                finish = d.finish_reason if d.finish_reason in ("stop", "length") else None
                if d.finish_reason is not None:
                    left -= 1
                if d.text or d.tokens or finish:
                    choice = {"index": sub.index[seq.id], "text": d.text, "logprobs": lp, "finish_reason": finish}
                    if finish is not None:
                        choice["stop_reason"] = d.stop_reason
                    yield frame({**sub.head, "choices": [choice]}), len(d.tokens)
                else:
                    yield "", len(d.tokens)

    def _echo_frame(self, sub: Submitted, s: Seq) -> str:
        """The frame that echoes a sequence's prompt (with its logprobs block when asked)."""
        lp = prompt_block(self.state, s) if sub.req.logprobs is not None else None
        return frame({**sub.head, "choices": [{"index": sub.index[s.id], "text": sub.echo(s), "logprobs": lp,
                                               "finish_reason": None}]})  # fmt: skip


def frame(obj: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def coalesced(queue: asyncio.Queue) -> list[tuple[Seq, Delta, list[int]]]:
    """The next delta, merged per sequence with any others already waiting: when the loop falls behind the
    scheduler, one frame carries several tokens instead of one frame each. With each merged delta, where each
    of its tokens' deltas began in its text (the tokens' `text_offset`s, as separate frames would give them)."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    merged: dict[int, tuple[Seq, Delta, list[int]]] = {}
    for seq, d in items:
        if seq.id not in merged:
            merged[seq.id] = (seq, Delta(text=d.text, tokens=list(d.tokens), logprobs=list(d.logprobs),
                                         top=list(d.top), finish_reason=d.finish_reason,
                                         stop_reason=d.stop_reason, error=d.error), [0] * len(d.tokens))  # fmt: skip
            continue
        _, m, rel = merged[seq.id]
        rel += [len(m.text)] * len(d.tokens)
        m.text += d.text
        m.tokens += d.tokens
        m.logprobs += d.logprobs
        m.top += d.top
        m.finish_reason, m.stop_reason, m.error = d.finish_reason, d.stop_reason, d.error
    return list(merged.values())
