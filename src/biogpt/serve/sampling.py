"""A completion request's prompts as token ids and its settings as SamplingParams, every limit checked
(protocol.py's MAX_*) before the work it bounds: a prompt that cannot fit the context is refused before
tokenization, a request asking for more sequences than the queue holds before anything runs."""

from __future__ import annotations

from collections.abc import Callable

from biogpt.generation.constraints import Constraint
from biogpt.generation.regex import RegexError
from biogpt.generation.scheduler import SamplingParams
from biogpt.generation.structured import RegexConstraint, choice_constraint, compile_regex
from biogpt.serve.middleware import APIError
from biogpt.serve.protocol import MAX_STOP, MAX_STOP_CHARS, MAX_STOP_TOKEN_IDS, CompletionRequest, StructuredOutputs
from biogpt.serve.state import State


def prepare(state: State, req: CompletionRequest) -> tuple[list[list[int]], Callable[[int], SamplingParams]]:
    """The prompts' ids and the sampling settings; the settings' cheap limits are checked first."""
    params = sampling_params(state, req)
    return prompt_ids(state, req), params


def prompt_ids(state: State, req: CompletionRequest) -> list[list[int]]:
    """Token ids of each prompt (a worker thread): at most max_queue sequences, each able to fit the context,
    both checked before any tokenization."""
    p = req.prompt
    count = 1 if isinstance(p, str) or (p and isinstance(p[0], int)) else len(p)
    if count * req.n > state.scheduler.max_queue:  # as a full queue (429), but before any tokenization
        raise APIError(429, f"{count} prompts x n={req.n} sequences in one request; the server queues at most "
                            f"{state.scheduler.max_queue}: send fewer per request", "rate_limit_error", "prompt",
                       headers={"Retry-After": "1"})  # fmt: skip
    if isinstance(p, str):
        out = [encode_prompt(state, p, req)]
    elif not p:
        raise APIError(400, "prompt is empty", param="prompt")
    elif all(isinstance(x, str) for x in p):
        out = [encode_prompt(state, x, req) for x in p]
    elif all(isinstance(x, int) for x in p):
        out = [list(p)]
    else:
        out = [list(x) for x in p]
    for ids in out:
        if not ids:
            raise APIError(400, "a token-id prompt is empty", param="prompt")
        state.check_ids(ids, "prompt")
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


def encode_prompt(state: State, text: str, req: CompletionRequest) -> list[int]:
    """The ids of one text prompt; a text that cannot fit the context is refused before Moses and BPE run."""
    least = getattr(state.tok, "min_tokens", None)
    if least is not None:
        need = least(text) + 1 + (req.max_tokens or 16)  # + the leading </s>
        if need > state.max_len:
            raise APIError(400, f"the prompt holds at least {need - 1 - (req.max_tokens or 16)} tokens; with "
                                f"max_tokens it exceeds the model's context of {state.max_len} tokens",
                           param="prompt")  # fmt: skip
    return state.tok.encode(text)


def echo_text(state: State, req: CompletionRequest, i: int) -> str:
    """Prompt i's text as `echo` repeats it (a token-id prompt decoded)."""
    p = req.prompt
    if isinstance(p, str):
        return p
    if isinstance(p[0], str):
        return p[i]
    ids = p if isinstance(p[0], int) else p[i]
    return state.tok.decode(ids)


def sampling_params(state: State, req: CompletionRequest) -> Callable[[int], SamplingParams]:
    """j -> the settings of a prompt's j-th sequence (its seed is the request's + j)."""
    if req.stop_token_ids:
        state.check_ids(req.stop_token_ids, "stop_token_ids")
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
    constraint = None if so is None else structured_constraint(state, so)

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


def structured_constraint(state: State, so: StructuredOutputs) -> Constraint:
    """The constraint of `structured_outputs`; choice and regex constraints keep no state between calls, so one
    serves every row."""
    if (so.choice is None) == (so.regex is None):
        raise APIError(400, "structured_outputs takes exactly one of choice or regex", param="structured_outputs")
    if so.choice is not None:
        if not so.choice:
            raise APIError(400, "structured_outputs.choice is an empty list", param="structured_outputs")
        eos = state.tok.eos_token_id if state.byte_level else 2
        return choice_constraint([state.encode(c, special=False) for c in so.choice], eos)
    if state.byte_level:
        raise APIError(400, "structured_outputs.regex needs BioGPT's tokenizer; with a byte-level "
                       "(GPT-2 family) model use structured_outputs.choice", param="structured_outputs")  # fmt: skip
    try:
        return RegexConstraint(compile_regex(so.regex, state.token_index), state.tok)
    except RegexError as e:
        raise APIError(400, str(e), param="structured_outputs") from None
