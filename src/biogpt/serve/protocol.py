"""The request bodies the server accepts (pydantic v2, unknown fields rejected) and the OpenAI error envelope.

Shapes follow the OpenAI completions API as vLLM serves it; the extensions (beam search, penalties,
structured outputs) are vLLM's names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Limits on what one request may ask for (each a 400 naming it): the work and memory a client can cause stay
# bounded whatever it sends.
MAX_STOP = 32  # stop strings per request
MAX_STOP_CHARS = 1024  # characters per stop string (a stream holds back this many minus one)
MAX_STOP_TOKEN_IDS = 256
MAX_EXTRACT_DOCS = 64  # documents per /v1/extract request
MAX_EXTRACT_CHARS = 1 << 20  # characters across one /v1/extract request's documents
MAX_OFA_PROMPTS = 16  # prompts per BiomedGPT request: one batch
INT64 = 1 << 63


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN / Infinity numbers are a 400


class StreamOptions(Strict):
    include_usage: bool = False


class StructuredOutputs(Strict):
    choice: list[str] | None = None
    regex: str | None = None


class CompletionRequest(Strict):
    model: str
    # a string, a list of strings, a list of token ids, or a list of lists of token ids
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(1.0, ge=0)
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)  # a 64-bit integer, as vLLM
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extensions
    use_beam_search: bool = False
    num_beams: int | None = Field(None, ge=1, le=16)
    length_penalty: float = 1.0
    repetition_penalty: float = Field(1.0, gt=0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    structured_outputs: StructuredOutputs | None = None
    image: str | None = None  # BiomedGPT: the image the prompt asks about, base64 (a data: URL is fine)


class TokenizeRequest(Strict):
    prompt: str
    model: str | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(Strict):
    tokens: list[int]
    model: str | None = None


class ExtractDocument(Strict):
    id: str
    text: str | None = None
    title: str | None = None
    abstract: str | None = None
    question: str | None = None  # PubMedQA


class ExtractRequest(Strict):
    task: Literal["bc5cdr", "ddi", "kd-dti", "hoc", "pubmedqa"]
    documents: list[ExtractDocument] = Field(min_length=1)
    grounded: bool = False
    format: Literal["jsonl", "bioc_json", "pubtator"] = "jsonl"
    model: str | None = None
    link: bool = True  # identifiers from `dictionary`, else the task's shipped default (bc5cdr)
    dictionary: str | None = Field(default=None, max_length=200)  # a name `biogpt serve --dictionary` gave
    linked: bool = False  # with grounded: entity slots hold only dictionary names


def error_body(message: str, type_: str, code: int, param: str | None = None) -> dict:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
