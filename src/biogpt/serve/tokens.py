"""Tokens as a client sees them: /tokenize and /detokenize, and the OpenAI `logprobs` block (each token's text,
its log-probability, the top alternatives and where its text starts in the answer)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from biogpt.generation.scheduler import Seq
from biogpt.serve.protocol import DetokenizeRequest, TokenizeRequest
from biogpt.serve.state import State
from biogpt.text import moses


def token_text(state: State, t: int) -> str:
    """Token t as the logprobs block names it: its spelling, BPE's `@@` joiner dropped."""
    if state.byte_level:  # GPT-2 family: the token's own text (bytes of a split character decode as U+FFFD)
        return state.tok.decode([t], skip_special_tokens=False)
    p = state.tok.pieces[t]
    return p[:-2] if p.endswith("@@") else p


def logprobs_block(state: State, tokens, lps, tops, offset: int, text_len: list[int]) -> dict:
    """The OpenAI logprobs object of some tokens whose texts start `offset + text_len[i]` into the answer."""
    return {"tokens": [token_text(state, t) for t in tokens], "token_logprobs": lps,
            "top_logprobs": [{token_text(state, k): v for k, v in top.items()} if top is not None else None
                             for top in tops],
            "text_offset": [offset + x for x in text_len]}  # fmt: skip


def search_text(state: State, t: int) -> str:
    """The characters token t contributes to decoded text, as far as they can be told alone ("" for a special
    token): Moses escapes undone."""
    if state.byte_level:
        return token_text(state, t)
    if t < 4:
        return ""
    p = token_text(state, t)
    return "-" if p == "@-@" else moses.unescape(p)


def text_offsets(state: State, toks: list[int]) -> list[int]:
    """len(decode(toks[:i])) for every i, in linear time: the end of each token's text, found in decode(toks)
    just after the previous token's (a token whose text is not found there, a rewritten one, moves nothing)."""
    full, out, pos = state.tok.decode(toks), [], 0
    for t in toks:
        out.append(pos)
        piece = search_text(state, t)
        at = full.find(piece, pos, pos + len(piece) + 8) if piece else -1
        if at >= 0:
            pos = at + len(piece)
    return out


def prompt_block(state: State, seq: Seq) -> dict:
    """The echoed prompt's logprobs block (its first token has no log-probability)."""
    toks = seq.prompt
    tops = [None] + (seq.prompt_top or [{}] * len(toks))[1:]
    return logprobs_block(state, toks, seq.prompt_logprobs or [None] * len(toks), tops, 0, text_offsets(state, toks))


def tokenize_ids(state: State, req: TokenizeRequest) -> list[int]:
    """The prompt's ids as the model reads them (with its special tokens when the request asks)."""
    if state.ofa is not None:  # BiomedGPT: <s> ... </s> around the text, as the encoder reads it
        return state.tok.encode_source(req.prompt) if req.add_special_tokens else state.tok.encode(req.prompt)
    return state.encode(req.prompt, req.add_special_tokens)


async def tokenize(state: State, req: TokenizeRequest) -> JSONResponse:
    """POST /tokenize: a long prompt is tokenized in a worker thread."""
    state.check_model(req.model)
    ids = await state.off_loop(tokenize_ids, state, req, size=len(req.prompt))
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": state.max_len})


async def detokenize(state: State, req: DetokenizeRequest) -> JSONResponse:
    """POST /detokenize: ids outside the vocabulary are a 400."""
    state.check_model(req.model)
    state.check_ids(req.tokens, "tokens")
    return JSONResponse({"prompt": await state.off_loop(state.tok.decode, req.tokens, size=len(req.tokens))})
