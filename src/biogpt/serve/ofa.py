"""/v1/completions for a BiomedGPT (OFA) model: each request's prompts (and its optional base64 `image`) go through
the encoder-decoder's beam search (generation/seq2seq.py), not the decoder-only scheduler.

Requests are served one at a time: a lock around the search, run in a worker thread so the event loop keeps
answering /health and /metrics. The prompts of one request that ask for the same task are one batch. A prompt is an
instruction as BiomedGPT reads it: with an image, a question about it (normalised as OFA's datasets do: " what does
the image describe?" asks for a caption); without, lower-cased text (e.g. ' what is the summary of article " ...
"?'). Decoding is the task's, as the original evaluates it (captions: beam 10, no-repeat 3; VQA: beam 1; text: beam
5, length penalty 0.7, no-repeat 3), with `max_tokens`, `num_beams`, `length_penalty`, `min_tokens` and
`temperature` applied when the request sets them. `n` returns the n best finished hypotheses (at most the beam). An
image must be PNG, JPEG, BMP, TIFF or GIF of at most `images.MAX_PIXELS` pixels (checked from its header); it is
decoded once, at most `DECODERS` at a time. Streaming, logprobs, stop strings, structured outputs and sampling
settings are refused with a 400 naming the field.
"""

from __future__ import annotations

import threading
import time
import uuid

import torch

from biogpt.errors import InputError
from biogpt.generation.seq2seq import beam_search, right_pad
from biogpt.images import decode_base64, open_image, patch_images
from biogpt.models.ofa import OFA
from biogpt.serve.protocol import CompletionRequest
from biogpt.tasks.biomedgpt import DECODING, Decoding, group_by_task, vqa_text
from biogpt.text.ofa import OFATokenizer

# request fields the beam search cannot honour: (field, the value that means "not used")
UNSUPPORTED = (("stream", False), ("logprobs", None), ("echo", False), ("stop", None), ("stop_token_ids", None),
               ("structured_outputs", None), ("ignore_eos", False), ("repetition_penalty", 1.0), ("top_p", 1.0),
               ("seed", None))  # fmt: skip


DECODERS = 2  # images decoded at once (each up to images.MAX_PIXELS pixels in memory)


class UnsupportedField(InputError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def instruction(prompt: str, with_image: bool) -> str:
    """The encoder text of a prompt: a question about the image, or a text instruction (see the module doc)."""
    return vqa_text(prompt) if with_image else " " + prompt.strip().lower()


def decoding(req: CompletionRequest, task: str) -> Decoding:
    """One task's settings (captioning, VQA or a text task), then what the request sets."""
    d = Decoding(**DECODING[task].kwargs())
    given = req.model_fields_set
    if "max_tokens" in given and req.max_tokens is not None:
        d.max_len_b = req.max_tokens
    if req.num_beams is not None:
        d.beam_size = req.num_beams
    if "length_penalty" in given:
        d.len_penalty = req.length_penalty
    if "min_tokens" in given:
        d.min_len = max(1, req.min_tokens)
    if d.min_len > d.max_len_b:
        raise UnsupportedField(f"min_tokens {d.min_len} exceeds the {d.max_len_b} tokens allowed (max_tokens)",
                               "min_tokens")  # fmt: skip
    return d


class OFACompletions:
    """The completions of one BiomedGPT model, one request at a time."""

    def __init__(self, model: OFA, tok: OFATokenizer):
        self.model, self.tok = model, tok
        self.lock = threading.Lock()
        self.decoding = threading.BoundedSemaphore(DECODERS)

    def check(self, req: CompletionRequest) -> None:
        for name, off in UNSUPPORTED:
            if getattr(req, name) != off:
                raise UnsupportedField(
                    f"`{name}` is not supported for BiomedGPT, which answers by beam search; drop it (num_beams, "
                    "max_tokens, length_penalty, min_tokens and n set the search)",
                    name,
                )
        if req.top_k not in (None, 0, -1):
            raise UnsupportedField("`top_k` is not supported for BiomedGPT, which answers by beam search", "top_k")
        if not isinstance(req.prompt, str) and not all(isinstance(p, str) for p in req.prompt):
            raise UnsupportedField("BiomedGPT takes text prompts (a string or a list of strings), not token ids",
                                   "prompt")  # fmt: skip

    def complete(self, req: CompletionRequest, model_name: str) -> dict:
        """The OpenAI completion object for `req` (blocking: call it in a worker thread)."""
        self.check(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise UnsupportedField("prompt is empty", "prompt")
        image = None
        if req.image is not None:
            with self.decoding:  # decoded once, a few at a time: each decode holds a full-size image in memory
                pil = open_image(decode_base64(req.image), "the request's image")
                image = patch_images([pil], self.model.config.image_size)
        texts = [instruction(p, image is not None) for p in prompts]
        groups = {task: (rows, decoding(req, task)) for task, rows in group_by_task(texts, image is not None).items()}
        for _, dec in groups.values():
            if req.n > dec.beam_size:
                raise UnsupportedField(f"n={req.n} exceeds the beam ({dec.beam_size}); raise num_beams or lower n", "n")
        sources = [self.tok.encode_source(t) for t in texts]
        temperature = req.temperature if "temperature" in req.model_fields_set and req.temperature else 1.0
        per_prompt: list = [None] * len(prompts)
        for rows, dec in groups.values():  # each prompt decoded with its own task's settings, as it would be alone
            hyps = self._search([sources[i] for i in rows], image, dec, temperature)
            for i, h in zip(rows, hyps):
                per_prompt[i] = (h, dec)
        choices, completion = [], 0
        for i, (per, dec) in enumerate(per_prompt):
            for j, h in enumerate(per[: req.n]):
                generated = len(h.tokens) - 1  # the closing </s> is not a generated token
                completion += generated
                choices.append({"index": i * req.n + j, "text": self.tok.decode(h.tokens).strip(), "logprobs": None,
                                "finish_reason": "length" if generated >= dec.max_len_b else "stop",
                                "stop_reason": None})  # fmt: skip
        prompt_tokens = sum(map(len, sources))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}  # fmt: skip

    def _search(self, sources: list[list[int]], image: torch.Tensor | None, dec: Decoding, temperature: float):
        """The beam search of one batch of sources with one task's settings; image [1, 3, S, S] or None."""
        src = right_pad(sources).to(self.model.embed_tokens.weight.device)
        images = masks = None
        if image is not None:
            images = image.expand(len(sources), -1, -1, -1).to(src.device, self.model.embed_tokens.weight.dtype)
            masks = torch.ones(len(sources), dtype=torch.bool, device=src.device)
        crange = (4, self.tok.code_start)  # text answers: no image-code or box ids
        with self.lock:
            return beam_search(self.model, src, images, masks, constraint_range=crange, temperature=temperature,
                               **dec.kwargs())  # fmt: skip
