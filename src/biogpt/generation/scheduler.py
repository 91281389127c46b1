"""Continuous batching: one scheduler owns the model and decodes every live sequence in one batch, one token per
row per step; new sequences join at any step and finished ones leave at once.

How a sequence runs:
- its prompt is prefilled alone, in chunks of at most `prefill_chunk` tokens per step (so a long prompt never
  stalls the rows that are decoding), in a cache of its own;
- its cache row is then copied into a free row of the batch cache, right-aligned to the batch's current
  length, the slots before it marked invalid. The model derives positions from each row's `next_pos` and
  masks invalid slots, so a row computes what the sequence alone would (greedy outputs equal offline
  `generate`'s token for token; tests/test_scheduler.py);
- live rows are kept packed at the front (a finished row is replaced by the last one), and the decode step
  runs on those rows only; when the shared length reaches the end of the buffer, the leading columns no
  live row uses are dropped.

Per sequence: greedy or seeded sampling (temperature, top-k, top-p; the same generator calls as offline
`generate`, so a seed gives the same tokens), repetition penalty, minimum length, a token constraint, stop
token ids and stop strings (checked on the incrementally decoded text), log-probabilities with the top
alternatives. Beam search does not fit a shared decode batch: such a sequence runs through offline
`generate` between two steps.

The scheduler runs in its own thread; `submit` and `cancel` may be called from any thread, and each sequence
reports `Delta`s (new text, tokens, log-probabilities, finish reason) through its callback, from the
scheduler's thread.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import nn

from biogpt.errors import GenerationCancelled, GenerationError
from biogpt.generation.constraints import Constraint
from biogpt.generation.engine import generate
from biogpt.generation.processors import process, sample

log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the text ends before the first of these
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k most likely tokens'
    prompt_logprobs: bool = False  # also the prompt tokens' log-probabilities (the first has none)
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    constraint: Constraint | None = None
    num_beams: int = 1
    length_penalty: float = 1.0

    def check(self) -> None:
        if self.max_tokens < 1:
            raise GenerationError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise GenerationError(
                f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0 (got {self.temperature}, {self.top_p}, "
                f"{self.top_k})"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise GenerationError(f"logprobs must be between 0 and 20, got {self.logprobs}")
        if self.repetition_penalty <= 0:
            raise GenerationError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise GenerationError(f"min_tokens must be in 0..max_tokens, got {self.min_tokens}")
        if self.num_beams < 1 or (self.num_beams > 1 and self.temperature > 0):
            raise GenerationError("beam search needs num_beams >= 1 and temperature 0 (no beam sampling)")


@dataclass
class Delta:
    """What a sequence produced since its last Delta."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # one per token when requested
    top: list[dict[int, float]] = field(default_factory=list)  # the top-k alternatives per token
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    error: str | None = None


class QueueFull(GenerationError):
    """More sequences waiting than the scheduler admits: the client should retry later."""


_ids = itertools.count()


class Seq:
    """One sequence: its prompt, settings, what it generated and where it is in the scheduler."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, on_delta: Callable[[Seq, Delta], None],
                 device: torch.device | str = "cpu"):  # fmt: skip
        self.id = next(_ids)
        self.prompt = list(prompt)
        self.params = params
        self.on_delta = on_delta
        self.generated: list[int] = []
        self.text = ""  # decoded text so far (stop string cut applied)
        self.sent = 0  # characters of text already reported
        self.prompt_logprobs: list[float | None] | None = None
        self.prompt_top: list[dict[int, float]] | None = None
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        # on the model's device, as offline generate's: the same seed draws the same tokens
        self.generator = torch.Generator(device=device).manual_seed(seed) if params.temperature > 0 else None
        self.cache = None  # the prompt's own cache while it is prefilled
        self.prefilled = 0
        self.cancelled = False
        self.finished = False
        self.finish_reason: str | None = None
        self.t_submit = time.perf_counter()
        self.t_last: float | None = None  # when the last token was produced


class Scheduler:
    """Owns `model`; `decode` (ids -> text) enables text, stop strings and streaming text deltas."""

    def __init__(
        self,
        model: nn.Module,
        decode: Callable[[list[int]], str] | None = None,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        prefill_chunk: int = 256,
        max_len: int | None = None,
        eos_token_id: int = 2,
        pad_token_id: int = 1,
        observe: Callable[[str, float], None] | None = None,
    ):
        self.model = model
        self.decode = decode
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.max_len = max_len or model.config.max_positions
        if self.max_len > model.config.max_positions:
            raise GenerationError(f"max_len {self.max_len} exceeds the model's {model.config.max_positions} positions")
        self.eos, self.pad = eos_token_id, pad_token_id
        self.observe = observe or (lambda name, value: None)
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch, self.max_len)  # [L, max_batch, H, max_len, D]
        self.cache.has_padding = True  # rows start at different slots: always mask
        self.running: list[Seq] = []  # running[r] owns cache row r
        self.prefilling: list[Seq] = []  # admitted, prompt not yet fully in
        self.waiting: deque[Seq] = deque()
        self.reserved = 0  # queue places held by `reserve`
        self.tokens_in = 0
        self.tokens_out = 0
        self.steps = 0
        self.compactions = 0
        self.calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._cancel_all = False
        self._thread: threading.Thread | None = None
        self._hold = _hold_point()

    # --- from any thread ---------------------------------------------------------------------------------

    def submit(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
               on_delta: Callable[[Seq, Delta], None]) -> list[Seq]:  # fmt: skip
        """Queue one sequence per (prompt, params), all or none: QueueFull when the queue has no room for them."""
        seqs = []
        for prompt, p in zip(prompts, params):
            p.check()
            if not prompt:
                raise GenerationError("a prompt needs at least one token (BioGPT prompts start with </s> = 2)")
            if len(prompt) + p.max_tokens > self.max_len:
                raise GenerationError(
                    f"the prompt ({len(prompt)} tokens) plus max_tokens ({p.max_tokens}) exceeds the model's context "
                    f"of {self.max_len} tokens; shorten the prompt or lower max_tokens"
                )
            seqs.append(Seq(prompt, p, on_delta, self.device))
        with self._lock:
            self._room(len(seqs))
            self.waiting.extend(seqs)
        self._wake.set()
        return seqs

    def _room(self, n: int) -> None:
        """QueueFull unless n more fit the queue (the caller holds the lock)."""
        if len(self.waiting) + self.reserved + n > self.max_queue:
            raise QueueFull(f"the queue is full ({len(self.waiting) + self.reserved} sequences or documents "
                            f"waiting, at most {self.max_queue}); retry later")  # fmt: skip

    def reserve(self, n: int) -> None:
        """Count n units of other work (documents of an extraction run through `call`) against the queue until
        `release(n)`: QueueFull when they do not fit."""
        with self._lock:
            self._room(n)
            self.reserved += n

    def release(self, n: int) -> None:
        with self._lock:
            self.reserved -= n

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn() in the scheduler's thread between two steps (it may use the model alone: e.g. a batch of
        task extraction); its result or exception arrives in the Future."""
        fut: Future = Future()
        with self._lock:
            self.calls.append((fn, fut))
        self._wake.set()
        return fut

    def cancel(self, seqs: Sequence[Seq]) -> None:
        """Stop these sequences; their rows are freed at the next step."""
        for s in seqs:
            s.cancelled = True
        self._wake.set()

    def cancel_all(self) -> None:
        """Stop every sequence queued, prefilling or running (a shutdown deadline). The scheduler's own thread
        marks them before its next step: a snapshot taken here could miss one that moves from `prefilling` to
        `running` between reading the two lists."""
        self._cancel_all = True
        self._wake.set()

    @property
    def queue_length(self) -> int:
        return len(self.waiting) + self.reserved

    @property
    def batch_size(self) -> int:
        return len(self.running)

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.running or self.calls)

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="biogpt-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; sequences still in it end as cancelled. `timeout`: seconds to wait for the step in
        progress (a long extraction or beam search); past it the daemon thread is left to end with the process,
        so that a shutdown deadline holds."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the scheduler's step did not end within %gs; not waiting for it", timeout)
                for s in list(self.running) + self.prefilling + list(self.waiting):
                    s.cancelled = True
                return
            self._thread = None
        for s in list(self.running) + self.prefilling + list(self.waiting):
            self._finish(s, "cancelled")
        for _, fut in self.calls:
            fut.cancel()
        self.calls.clear()
        self.running, self.prefilling = [], []
        self.waiting.clear()
        self.cache.length = 0

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (True), or `timeout` seconds passed (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.idle:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def _loop(self) -> None:
        while not self._stop:
            if self._cancel_all:
                self._cancel_all = False
                with self._lock:
                    everyone = list(self.waiting) + self.prefilling + list(self.running)
                self.cancel(everyone)
                self._drop_cancelled()
            if self.idle:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if self._held():  # tests only: decode nothing, but still free what is cancelled
                self._drop_cancelled()
                self._wake.wait(0.02)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as e:  # a bug or an out-of-memory: fail what is in flight, keep serving
                log.exception("scheduler step failed")
                for s in list(self.running) + self.prefilling:
                    self._finish(s, "error", error=f"generation failed: {e}")
                self.running, self.prefilling = [], []
                self.cache.length = 0

    def _held(self) -> bool:
        """The tests' hold point (see `_hold_point`) is reached: a running sequence has its N tokens and the
        hold file exists."""
        if self._hold is None or not self.running:
            return False
        n, path = self._hold
        return any(len(s.generated) >= n for s in self.running) and os.path.exists(path)

    # --- the step ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled sequences, prefill up to `prefill_chunk` prompt tokens, decode one token per live row."""
        self.steps += 1
        while self.calls:
            with self._lock:
                fn, fut = self.calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:
                    fut.set_exception(e)
        self._drop_cancelled()
        self._prefill()
        if self.running:
            self._decode()

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [s for s in self.waiting if s.cancelled]
            if gone:
                self.waiting = deque(s for s in self.waiting if not s.cancelled)
        for s in gone:
            self._finish(s, "cancelled")
        for s in [s for s in self.prefilling if s.cancelled]:
            self.prefilling.remove(s)
            self._finish(s, "cancelled")
        rows = [r for r, s in enumerate(self.running) if s.cancelled]
        for r in rows:
            self._finish(self.running[r], "cancelled")
        self._free(rows)

    def _prefill(self) -> None:
        budget = self.prefill_chunk
        while budget > 0:
            if not self.prefilling:
                if len(self.running) >= self.max_batch:
                    return
                with self._lock:
                    if not self.waiting:
                        return
                    s = self.waiting.popleft()
                if s.params.num_beams > 1:
                    try:
                        self._beam(s)
                    except GenerationCancelled:  # its client went away, or the server stops, mid-search
                        self._finish(s, "cancelled")
                    except Exception as e:  # this request fails, the batch goes on
                        log.exception("beam search failed")
                        self._finish(s, "error", error=f"generation failed: {e}")
                    continue
                self.prefilling.append(s)
            s = self.prefilling[0]
            if s.cache is None:
                s.cache = self.model.new_cache(1, len(s.prompt))
            chunk = s.prompt[s.prefilled : s.prefilled + budget]
            ids = torch.tensor([chunk], device=self.device)
            full = s.params.prompt_logprobs
            logits = self.model(ids, None, cache=s.cache, last_only=not full)[0]  # [T or 1, V]
            if full:
                self._prompt_logprobs(s, chunk, logits)
            s.prefilled += len(chunk)
            budget -= len(chunk)
            self.tokens_in += len(chunk)
            if s.prefilled < len(s.prompt):
                return  # the rest at the next step: running rows decode in between
            self.prefilling.pop(0)
            if self._accept_or_fail(s, logits[-1]):
                s.cache = None
                continue
            self._insert(s)

    def _prompt_logprobs(self, s: Seq, chunk: list[int], logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens, from each chunk's logits (the next chunk's first token is
        scored by this chunk's last position)."""
        if s.prompt_logprobs is None:
            s.prompt_logprobs, s.prompt_top = [None], [{}]
        lp = torch.log_softmax(logits.float(), -1)  # [T, V]
        nxt = s.prompt[s.prefilled + 1 : s.prefilled + len(chunk) + 1]
        k = s.params.logprobs or 0
        for i, t in enumerate(nxt):
            s.prompt_logprobs.append(float(lp[i, t]))
            s.prompt_top.append(self._top(lp[i], k))

    def _insert(self, s: Seq) -> None:
        """The prefilled prompt into the next free row, right-aligned to the batch's length."""
        own, cache = s.cache, self.cache
        m = own.length
        if not self.running:
            cache.length = m
        elif cache.length < m:
            cache.shift(m - cache.length)
        cache.put_row(len(self.running), own)
        self.running.append(s)
        s.cache = None

    def _decode(self) -> None:
        cache = self.cache
        n = len(self.running)
        if cache.length + 1 > self.max_len or cache.length > 64:
            # drop the leading columns no live row uses: needed at the end of the buffer, and worth a copy
            # when it halves the attention span
            first = int(cache.valid[:n, : cache.length].any(0).int().argmax())
            if cache.length + 1 > self.max_len or first > cache.length // 2:
                cache.shift(-first)
                self.compactions += 1
        ids = torch.tensor([[s.generated[-1]] for s in self.running], device=self.device)
        compiled = getattr(self.model, "compiled_step", None)  # generation/compiled.py
        if compiled is not None:
            logits = compiled.rows(ids, cache, n)  # [n, V]
        else:
            view = cache.rows(n)
            logits = self.model(ids, torch.ones_like(ids), cache=view, last_only=True)[:, -1]  # [n, V]
            cache.length = view.length
        greedy = logits.argmax(-1).tolist()
        done = [r for r, s in enumerate(self.running) if self._accept_or_fail(s, logits[r], greedy[r])]
        self._free(done)

    def _free(self, rows: list[int]) -> None:
        """Free these rows at once: the last live row moves into each (from the highest row down)."""
        for r in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if r != last:
                self.cache.move_row(last, r)
                self.running[r] = self.running[last]
            self.running.pop()
        if not self.running:
            self.cache.length = 0

    # --- one token ---------------------------------------------------------------------------------------

    def _accept_or_fail(self, s: Seq, logits: torch.Tensor, greedy: int | None = None) -> bool:
        """`_accept`, with a failure (a constraint, a stop check, a client's callback) ending this sequence
        alone with an error: the other rows of the batch go on."""
        try:
            return self._accept(s, logits, greedy)
        except Exception as e:
            log.exception("choosing the next token failed")
            s.finished = False  # _accept may have marked it finished before failing: report the error
            try:
                self._finish(s, "error", error=f"generation failed: {type(e).__name__}")
            except Exception:  # its callback fails too: the row is freed all the same
                log.exception("reporting a failed sequence failed")
                s.finished = True
            return True

    def _accept(self, s: Seq, logits: torch.Tensor, greedy: int | None = None) -> bool:
        """Choose the next token of s from its logits [V]; report it; True when s has finished."""
        p = s.params
        n = len(s.generated)
        if p.repetition_penalty != 1.0 or n < p.min_tokens or p.constraint is not None:
            seqs = torch.tensor([s.prompt + s.generated], device=logits.device)  # [1, prompt + generated]
            no_pad = torch.zeros(1, dtype=torch.long, device=logits.device)
            scores = process(logits[None].float(), seqs, n, repetition_penalty=p.repetition_penalty,
                             no_repeat_ngram_size=0, min_new_tokens=p.min_tokens, eos=self.eos,
                             constraints=[p.constraint] if p.constraint is not None else None,
                             prompt_len=len(s.prompt), pad_lens=no_pad)  # fmt: skip
            greedy = None
        else:
            scores = logits[None].float()
        if p.temperature > 0:
            tok = int(sample(scores, p.temperature, p.top_k, p.top_p, s.generator)[0])
        else:
            tok = greedy if greedy is not None else int(scores[0].argmax())
        delta = Delta(tokens=[tok])
        if p.logprobs is not None:
            lp = torch.log_softmax(logits.float(), -1)
            delta.logprobs.append(float(lp[tok]))
            delta.top.append(self._top(lp, p.logprobs))
        s.generated.append(tok)
        self.tokens_out += 1
        now = time.perf_counter()
        if s.t_last is None:
            self.observe("ttft", now - s.t_submit)
        else:
            self.observe("tpot", now - s.t_last)
        s.t_last = now

        reason, why = None, None
        if tok == self.eos and not p.ignore_eos:
            reason, why = "stop", None
        elif tok in p.stop_token_ids:
            reason, why = "stop", tok
        if self.decode is not None:
            text_ids = s.generated[:-1] if reason else s.generated
            text = self.decode(text_ids)
            if p.stop and reason is None:
                lo = max(0, len(s.text) - max(len(x) for x in p.stop))
                hits = [(text.find(x, lo), x) for x in p.stop if text.find(x, lo) >= 0]
                if hits:
                    at, why = min(hits)
                    reason, text = "stop", text[:at]
            s.text = text
        if reason is None and (len(s.generated) >= p.max_tokens or len(s.prompt) + len(s.generated) >= self.max_len):
            reason = "length"
        delta.text = self._new_text(s, final=reason is not None)
        if reason is not None:
            s.finished, s.finish_reason = True, reason
            delta.finish_reason, delta.stop_reason = reason, why
        s.on_delta(s, delta)
        return reason is not None

    def _new_text(self, s: Seq, final: bool) -> str:
        """The text not yet reported. While running, the last word (which the next token may still rewrite) and
        a tail that could begin a stop string are held back, and nothing is reported when detokenizing the
        longer sequence rewrote what was already sent."""
        keep = 0 if final or not s.params.stop else max(len(x) for x in s.params.stop) - 1
        if not final:  # the last word may still change: an escape such as "&#124;" arrives in pieces
            keep = max(keep, len(s.text) - (s.text.rfind(" ") + 1))
        upto = max(s.sent, len(s.text) - keep)
        new = s.text[s.sent : upto]
        s.sent = upto
        return new

    @staticmethod
    def _top(lp: torch.Tensor, k: int) -> dict[int, float]:
        if k <= 0:
            return {}
        v, i = torch.topk(lp, k)
        return dict(zip(i.tolist(), v.tolist()))

    def _finish(self, s: Seq, reason: str, error: str | None = None) -> None:
        if s.finished:
            return
        s.finished, s.finish_reason = True, reason
        s.on_delta(s, Delta(finish_reason=reason, error=error))

    def _beam(self, s: Seq) -> None:
        """Beam search through offline `generate`, between two steps (its beams need rows of their own)."""
        p = s.params
        if s.cancelled:
            self._finish(s, "cancelled")
            return
        out = generate(self.model, [s.prompt], max_new_tokens=p.max_tokens, min_new_tokens=p.min_tokens,
                       num_beams=p.num_beams, length_penalty=p.length_penalty, repetition_penalty=p.repetition_penalty,
                       eos_token_id=self.eos, pad_token_id=self.pad, constraints=p.constraint,
                       output_logprobs=p.logprobs is not None,
                       should_stop=lambda: s.cancelled or self._stop)  # fmt: skip
        self.tokens_in += len(s.prompt)
        if s.cancelled:  # while it ran: nothing is reported
            self._finish(s, "cancelled")
            return
        new = out.sequences[0, len(s.prompt) :].tolist()
        ends = (self.eos, *p.stop_token_ids)
        cut = next((i for i, t in enumerate(new) if t in ends), None)
        if cut is not None:
            new = new[: cut + 1]
        for i, tok in enumerate(new):
            s.generated.append(tok)
            reason = None
            if i == cut:
                reason = "stop"
            elif i == len(new) - 1:
                reason = "length"
            delta = Delta(tokens=[tok])
            if out.logprobs is not None:
                delta.logprobs.append(float(out.logprobs[0, i]))
                delta.top.append({})
            if i == cut and tok != self.eos:
                delta.stop_reason = tok
            if self.decode is not None:
                s.text = self.decode(s.generated[:-1] if i == cut else s.generated)
                hits = [(s.text.find(x), x) for x in p.stop if x in s.text]
                if hits:
                    at, why = min(hits)
                    s.text, reason, delta.stop_reason = s.text[:at], "stop", why
            self.tokens_out += 1
            delta.text = self._new_text(s, final=reason is not None)
            if reason is not None:
                s.finished, s.finish_reason, delta.finish_reason = True, reason, reason
                s.on_delta(s, delta)
                return
            s.on_delta(s, delta)


HOLD_ENV = "BIOGPT_TEST_HOLD"


def _hold_point() -> tuple[int, str] | None:
    """Tests' fault-injection point: with $BIOGPT_TEST_HOLD=N:PATH, once a running sequence has generated N
    tokens the scheduler decodes nothing more while the file PATH exists (cancellations and shutdown still act),
    so that a request is still running at a known token, however fast the machine, until the test lets it go."""
    n, _, path = os.environ.get(HOLD_ENV, "").partition(":")
    return (int(n), path) if n.isdigit() and path else None
