"""What the routes and services share: the model (once loaded), its tokenizer and scheduler, the metrics, whether
the server is draining and how many requests are in flight, and the checks and worker threads every service uses.

Nothing a client sends costs the event loop more than a few milliseconds: tokenization and detokenization of
more than INLINE_CHARS characters (or ids) and constraint compilation run in a worker thread (CPU_WORKERS at
once, `State.off_loop`), generation and extraction in the scheduler's thread.
"""

from __future__ import annotations

import asyncio
import time

import torch

from biogpt.api import family_of
from biogpt.generation.scheduler import Scheduler
from biogpt.generation.structured import TokenIndex
from biogpt.serve.metrics import Metrics
from biogpt.serve.middleware import APIError
from biogpt.text.tokenizer import Tokenizer

try:  # BiomedGPT's path needs the ofa extra (tokenizers, pillow); BioGPT and GPT-2 serve without it
    from biogpt.serve.ofa import OFACompletions
except ImportError:
    OFACompletions = None

CPU_WORKERS = 1  # long tokenizations etc. at once in worker threads: each competes with the loop for the GIL
INLINE_CHARS = 4096  # inputs up to this size are tokenized in the loop (about a millisecond)


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
        self._workers = asyncio.Semaphore(CPU_WORKERS)
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

    async def off_loop(self, fn, *args, size: int | None = None):
        """fn(*args) in a worker thread, at most CPU_WORKERS at once, so that the event loop keeps answering;
        inline when `size` (characters or ids to process) is at most INLINE_CHARS: short work does not queue."""
        if size is not None and size <= INLINE_CHARS:
            return fn(*args)
        async with self._workers:
            return await asyncio.to_thread(fn, *args)

    def check_model(self, name: str | None) -> None:
        """404 for a request that names another model than the one served."""
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model `{name}` does not exist; this server serves `{self.model_name}`",
                           "not_found_error", "model")  # fmt: skip

    def check_ids(self, ids: list[int], param: str) -> None:
        """400 for a token id outside the vocabulary (an embedding lookup would fail on it)."""
        V = self.tok.vocab_size
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{V - 1})", param=param)
