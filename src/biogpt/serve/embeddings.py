"""POST /v1/embeddings as OpenAI's API defines it, over `biogpt.generation.embed`.

`input`: a string, a list of strings, a list of token ids, or a list of lists of token ids (at most
MAX_INPUTS, none empty, each within the model's positions; a text is encoded as a prompt, BioGPT's leading
`</s>` included). `encoding_format`: "float" (lists of numbers) or "base64" (the float32 values, little-endian,
base64: what the `openai` client asks for and decodes). `dimensions`: accepted only when it equals the model's
width (the vectors are not truncatable). Extensions, as vLLM names its pooling options: `pooling` ("mean", the
default, or "last") and `normalize` (default true). The answer carries `usage` (prompt and total tokens).
The vectors are computed in the scheduler's thread between two decoding steps, as /v1/extract is.
"""

from __future__ import annotations

import asyncio
import base64
from functools import partial
from typing import Literal

import numpy as np
from fastapi import FastAPI
from pydantic import Field, StrictInt, StrictStr

from biogpt.errors import GenerationError
from biogpt.generation.embed import embed
from biogpt.serve.protocol import Strict

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingRequest(Strict):
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # extensions
    pooling: Literal["mean", "last"] = "mean"
    normalize: bool = True
    batch_size: int = Field(16, ge=1, le=256)


def input_ids(req: EmbeddingRequest, state, fail) -> list[list[int]]:
    """The request's inputs as token ids, each checked: not empty, within the vocabulary and the positions."""
    x = req.input
    if isinstance(x, str):
        texts, ids = [x], None
    elif not x:
        raise fail(400, "input is an empty list", param="input")
    elif isinstance(x[0], str):
        texts, ids = x, None
    elif isinstance(x[0], int):
        texts, ids = None, [list(x)]
    else:
        texts, ids = None, [list(i) for i in x]
    n = len(texts if texts is not None else ids)
    if n > MAX_INPUTS:
        raise fail(400, f"input holds {n} items; send at most {MAX_INPUTS} per request", param="input")
    if texts is not None:
        for i, t in enumerate(texts):
            if not t:
                raise fail(400, f"input[{i}] is an empty string", param="input")
        ids = [state.encode(t) for t in texts]
    V, limit = state.tok.vocab_size, state.model.config.max_positions
    for i, row in enumerate(ids):
        if not row:
            raise fail(400, f"input[{i}] has no tokens", param="input")
        bad = [t for t in row if not 0 <= t < V]
        if bad:
            raise fail(400, f"input[{i}]: token id {bad[0]} is outside the vocabulary (0..{V - 1})", param="input")
        if len(row) > limit:
            raise fail(400, f"input[{i}] has {len(row)} tokens; the model reads at most {limit}", param="input")
    return ids


def encode_vector(v: np.ndarray, encoding_format: str) -> list[float] | str:
    """A float32 vector as OpenAI sends it: a list of numbers, or its little-endian bytes in base64."""
    if encoding_format == "base64":
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
    return v.tolist()


def register(app: FastAPI, state, fail, check_model, off_loop) -> None:
    """Add POST /v1/embeddings to the app. `state` is the server's State, `fail(status, message, param=...)`
    builds its error (the OpenAI envelope), `check_model(name)` answers 404 for another model's id, and
    `off_loop(fn, *args)` runs tokenization in the server's worker thread, so a long input never stalls the loop."""

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        check_model(req.model)
        if state.scheduler is None:
            raise fail(400, "embeddings come from BioGPT and GPT-2 family models; this server serves a BiomedGPT "
                            "(OFA) model", param="model")  # fmt: skip
        d = state.model.config.d_model
        if req.dimensions is not None and req.dimensions != d:
            raise fail(400, f"dimensions {req.dimensions}: this model's embeddings have {d} dimensions and are not "
                            f"truncatable; leave dimensions out or send {d}", param="dimensions")  # fmt: skip
        ids = await off_loop(input_ids, req, state, fail)
        vectors = []
        try:  # one batch per scheduler call, so that other clients' decoding steps run in between
            for b in range(0, len(ids), req.batch_size):
                part = ids[b : b + req.batch_size]
                job = partial(embed, state.model, part, req.pooling, req.normalize, len(part))
                vectors.extend(await asyncio.wrap_future(state.scheduler.call(lambda job=job: job().numpy())))
        except GenerationError as e:
            raise fail(400, str(e), param="input") from None
        data = [{"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
                for i, v in enumerate(vectors)]  # fmt: skip
        tokens = sum(map(len, ids))
        return {"object": "list", "data": data, "model": state.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
