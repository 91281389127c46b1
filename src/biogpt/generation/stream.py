"""One sequence's bookkeeping while it is decoded token by token, written once: which token comes next (the
engine's processors and sampling), when it ends (end token, stop token ids, stop strings, max tokens, the
context), the text reported so far (incremental detokenisation) and log-probabilities with their top
alternatives. The continuous-batching scheduler keeps one `SequenceState` per sequence (its `Seq`), for rows
of its shared decode batch and for beam searches run whole.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from biogpt.errors import GenerationError
from biogpt.generation.constraints import Constraint, bind_eos
from biogpt.generation.decode import GREEDY, Sampling, choose
from biogpt.generation.processors import process


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
        """GenerationError for settings no decoding can honour."""
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


@dataclass(frozen=True)
class Rules:
    """What every sequence of one model shares: its end token, its context, how ids become text (None: no text,
    no stop strings)."""

    eos: int
    max_len: int
    decode: Callable[[list[int]], str] | None = None


class SequenceState:
    """A prompt, its settings and what was generated after it, reported as `Delta`s."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, device: torch.device | str = "cpu"):
        self.prompt = list(prompt)
        self.params = params
        self.generated: list[int] = []
        self.text = ""  # decoded text so far (stop string cut applied)
        self.sent = 0  # characters of text already reported
        self.prompt_logprobs: list[float | None] | None = None
        self.prompt_top: list[dict[int, float]] | None = None
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        # on the model's device, as offline generate's: the same seed draws the same tokens
        self.generator = torch.Generator(device=device).manual_seed(seed) if params.temperature > 0 else None
        p = params
        self.how = Sampling(True, p.temperature, p.top_k, p.top_p, self.generator) if self.generator else GREEDY
        self.finished = False
        self.finish_reason: str | None = None
        self.constraint: Constraint | None = None  # params.constraint with the end token, from the first choice

    def choose(self, logits: torch.Tensor, eos: int, greedy: int | None = None) -> int:
        """The next token from the model's logits [V] after this sequence, through the engine's processors and
        sampling; `greedy`: its argmax when the caller has it already (used where nothing changes the scores)."""
        p, n = self.params, len(self.generated)
        if self.constraint is None and p.constraint is not None:  # once: the model's end token where it has none
            self.constraint = bind_eos(p.constraint, eos)
        constraint = self.constraint
        if p.repetition_penalty != 1.0 or n < p.min_tokens or constraint is not None:
            seqs = torch.tensor([self.prompt + self.generated], device=logits.device)  # [1, prompt + generated]
            no_pad = torch.zeros(1, dtype=torch.long, device=logits.device)
            scores = process(logits[None].float(), seqs, n, repetition_penalty=p.repetition_penalty,
                             no_repeat_ngram_size=0, min_new_tokens=p.min_tokens, eos=eos,
                             constraints=[constraint] if constraint is not None else None,
                             prompt_len=len(self.prompt), pad_lens=no_pad)  # fmt: skip
            greedy = None
        else:
            scores = logits[None].float()
        if greedy is not None and not self.how.do_sample:
            return greedy
        return int(choose(scores, self.how)[0])

    def scored(self, logits: torch.Tensor, tok: int) -> tuple[float, dict[int, float]]:
        """tok's log-probability under logits [V] and the `logprobs` most likely tokens'."""
        lp = torch.log_softmax(logits.float(), -1)  # [V]
        return float(lp[tok]), top_logprobs(lp, self.params.logprobs or 0)

    def add_prompt_logprobs(self, start: int, chunk: list[int], logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens after `chunk` (the prompt's tokens from `start`, whose logits
        [len(chunk), V] these are): the next chunk's first token is scored by this chunk's last position."""
        if self.prompt_logprobs is None:
            self.prompt_logprobs, self.prompt_top = [None], [{}]
        lp = torch.log_softmax(logits.float(), -1)  # [T, V]
        k = self.params.logprobs or 0
        for i, t in enumerate(self.prompt[start + 1 : start + len(chunk) + 1]):
            self.prompt_logprobs.append(float(lp[i, t]))
            self.prompt_top.append(top_logprobs(lp[i], k))

    def take(self, tok: int, rules: Rules, logprob: tuple[float, dict[int, float]] | None = None,
             ignore_eos: bool | None = None, last: bool = False) -> Delta:  # fmt: skip
        """Append tok (with its log-probability and top alternatives when asked); end the sequence where a stop
        rule says so, or for its length where `last` or its limits say; return the Delta to report.
        `ignore_eos`: the params' unless given."""
        p = self.params
        delta = Delta(tokens=[tok])
        if logprob is not None:
            delta.logprobs.append(logprob[0])
            delta.top.append(logprob[1])
        self.generated.append(tok)
        reason, why = None, None
        if tok == rules.eos and not (p.ignore_eos if ignore_eos is None else ignore_eos):
            reason = "stop"
        elif tok in p.stop_token_ids:
            reason, why = "stop", tok
        if rules.decode is not None:
            text = rules.decode(self.generated[:-1] if reason else self.generated)
            if p.stop and reason is None:
                lo = max(0, len(self.text) - max(len(x) for x in p.stop))
                hits = [(text.find(x, lo), x) for x in p.stop if text.find(x, lo) >= 0]
                if hits:
                    at, why = min(hits)
                    reason, text = "stop", text[:at]
            self.text = text
        if reason is None and (last or len(self.generated) >= p.max_tokens or
                               len(self.prompt) + len(self.generated) >= rules.max_len):  # fmt: skip
            reason = "length"
        delta.text = self.new_text(final=reason is not None)
        if reason is not None:
            self.finished, self.finish_reason = True, reason
            delta.finish_reason, delta.stop_reason = reason, why
        return delta

    def new_text(self, final: bool) -> str:
        """The text not yet reported. While running, the last word (which the next token may still rewrite) and
        a tail that could begin a stop string are held back, and nothing is reported when detokenizing the
        longer sequence rewrote what was already sent."""
        keep = 0 if final or not self.params.stop else max(len(x) for x in self.params.stop) - 1
        if not final:  # the last word may still change: an escape such as "&#124;" arrives in pieces
            keep = max(keep, len(self.text) - (self.text.rfind(" ") + 1))
        upto = max(self.sent, len(self.text) - keep)
        new = self.text[self.sent : upto]
        self.sent = upto
        return new


def top_logprobs(lp: torch.Tensor, k: int) -> dict[int, float]:
    """The k most likely tokens of log-probabilities lp [V], id -> log-probability ({} for k <= 0)."""
    if k <= 0:
        return {}
    v, i = torch.topk(lp, k)
    return dict(zip(i.tolist(), v.tolist()))
