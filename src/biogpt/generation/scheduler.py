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

The scheduler runs in its own thread (generation/worker.py: admission, calls, cancellation, start and stop);
`submit` and `cancel` may be called from any thread, and each sequence reports `Delta`s (new text, tokens,
log-probabilities, finish reason) through its callback, from the scheduler's thread. A sequence's bookkeeping
(the token choice, stopping, text deltas, log-probabilities) is generation/stream.py's, and a decoding step
runs the model as offline decoding does (generation/decode.py's `model_step`, or the compiled step's rows).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import torch
from torch import nn

from biogpt.errors import GenerationCancelled, GenerationError
from biogpt.generation.decode import model_step, special_ids
from biogpt.generation.engine import generate
from biogpt.generation.stream import Delta, Rules, SamplingParams, SequenceState
from biogpt.generation.worker import HOLD_ENV, QueueFull, Worker

__all__ = ["HOLD_ENV", "Delta", "QueueFull", "SamplingParams", "Scheduler", "Seq"]

log = logging.getLogger(__name__)


_ids = itertools.count()


class Seq(SequenceState):
    """One sequence: its prompt, settings, what it generated (generation/stream.py) and where it is in the
    scheduler."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, on_delta: Callable[[Seq, Delta], None],
                 device: torch.device | str = "cpu"):  # fmt: skip
        super().__init__(prompt, params, device)
        self.id = next(_ids)
        self.on_delta = on_delta
        self.cache = None  # the prompt's own cache while it is prefilled
        self.prefilled = 0
        self.cancelled = False
        self.t_submit = time.perf_counter()
        self.t_last: float | None = None  # when the last token was produced


class Scheduler(Worker):
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
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        observe: Callable[[str, float], None] | None = None,
    ):
        super().__init__(max_queue)
        self.model = model
        self.decode = decode
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.max_len = max_len or model.config.max_positions
        if self.max_len > model.config.max_positions:
            raise GenerationError(f"max_len {self.max_len} exceeds the model's {model.config.max_positions} positions")
        self.eos, self.pad = special_ids(model, eos_token_id, pad_token_id)  # the model config's where None
        self.rules = Rules(self.eos, self.max_len, decode)
        self.observe = observe or (lambda name, value: None)
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch, self.max_len)  # [L, max_batch, H, max_len, D]
        self.cache.has_padding = True  # rows start at different slots: always mask
        self.tokens_in = 0
        self.tokens_out = 0
        self.steps = 0
        self.compactions = 0

    # --- from any thread ---------------------------------------------------------------------------------

    def submit(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
               on_delta: Callable[[Seq, Delta], None]) -> list[Seq]:  # fmt: skip
        """Queue one sequence per (prompt, params), all or none: QueueFull when the queue has no room for them."""
        seqs = []
        for prompt, p in zip(prompts, params):
            p.check()
            if not prompt:
                raise GenerationError("a prompt needs at least one token (BioGPT's start with </s>)")
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

    # --- the step ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Drop cancelled sequences, prefill up to `prefill_chunk` prompt tokens, decode one token per live row."""
        self.steps += 1
        self._run_calls()
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
                s.add_prompt_logprobs(s.prefilled, chunk, logits)
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
            logits = model_step(self.model, ids, torch.ones_like(ids), view)  # [n, V]
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
        tok = s.choose(logits, self.eos, greedy)
        delta = s.take(tok, self.rules, s.scored(logits, tok) if s.params.logprobs is not None else None)
        self._count(s)
        s.on_delta(s, delta)
        return s.finished

    def _count(self, s: Seq) -> None:
        """One more token out: the time to the first token, or between two tokens."""
        self.tokens_out += 1
        now = time.perf_counter()
        if s.t_last is None:
            self.observe("ttft", now - s.t_submit)
        else:
            self.observe("tpot", now - s.t_last)
        s.t_last = now

    def _finish(self, s: Seq, reason: str, error: str | None = None) -> None:
        if s.finished:
            return
        s.finished, s.finish_reason = True, reason
        s.on_delta(s, Delta(finish_reason=reason, error=error))

    def _beam(self, s: Seq) -> None:
        """Beam search through offline `generate`, between two steps (its beams need rows of their own); its
        tokens are then reported one by one, ending at the first end token or stop token id it holds."""
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
        for i, tok in enumerate(new):
            lp = (float(out.logprobs[0, i]), {}) if out.logprobs is not None else None
            delta = s.take(tok, self.rules, lp, ignore_eos=False, last=i == len(new) - 1)
            self.tokens_out += 1
            s.on_delta(s, delta)
            if s.finished:
                return
