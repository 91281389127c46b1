"""POST /v1/extract: the mining pipeline's Extractor (or, for a GPT-2 family model, the generative one) over the
documents of one request, run in the scheduler's thread one batch at a time, the records written in the
request's format as `biogpt extract` writes them."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse

from biogpt.errors import BioGPTError
from biogpt.generation.scheduler import QueueFull
from biogpt.mining.extractor import Extractor
from biogpt.mining.generative import GenerativeExtractor
from biogpt.mining.linking import Linker, default_linker
from biogpt.mining.readers import Document, Passage, title_abstract
from biogpt.mining.writers import bioc_document, jsonl_line, pubtator_document
from biogpt.serve.middleware import APIError
from biogpt.serve.protocol import MAX_EXTRACT_CHARS, MAX_EXTRACT_DOCS, ExtractRequest
from biogpt.serve.state import State


class Extraction:
    """The extraction service; `dictionaries`: name -> linker, those requests may name (clients never send
    paths). A task's default dictionary is loaded on its first request."""

    def __init__(self, state: State, dictionaries: dict[str, Linker] | None = None):
        self.state = state
        self.loaded = dict(dictionaries or {})
        self.defaults: dict[str, Linker | None] = {}

    async def extract(self, req: ExtractRequest, request: Request) -> JSONResponse:
        """The records of the request's documents (499 when the client went away first)."""
        st = self.state
        st.check_model(req.model)
        if st.ofa is not None:
            raise APIError(400, "/v1/extract runs BioGPT's task models; this server serves a BiomedGPT model")
        docs = documents(req)
        ex = self.extractor(req, self.linker(req))
        records = await self.run(ex, docs, request)
        if records is None:
            return JSONResponse({}, status_code=499)
        if req.format == "jsonl":
            data = "".join(jsonl_line(r) for r in records)
        elif req.format == "bioc_json":
            data = [bioc_document(r) for r in records]
        else:
            data = "".join(pubtator_document(r) for r in records)
        return JSONResponse({"object": "extraction", "model": st.model_name, "task": req.task,
                             "format": req.format, "records": records, "data": data})  # fmt: skip

    def linker(self, req: ExtractRequest) -> Linker | None:
        """The request's dictionary: one the server was started with, by name, or the task's default."""
        if not req.link:
            if req.linked or req.dictionary is not None:
                raise APIError(400, "`link: false` turns linking off; drop `dictionary` and `linked`", param="link")
            return None
        if req.dictionary is not None:
            if req.dictionary not in self.loaded:
                have = ", ".join(sorted(self.loaded)) or "none (start it with biogpt serve --dictionary NAME=FILE)"
                raise APIError(400, f"unknown dictionary; this server has: {have}", param="dictionary")
            linker = self.loaded[req.dictionary]
        else:
            if req.task not in self.defaults:
                self.defaults[req.task] = default_linker(req.task)
            linker = self.defaults[req.task]
        if req.linked and (not req.grounded or linker is None):
            raise APIError(400, "`linked` needs `grounded: true` and a dictionary for the task", param="linked")
        return linker

    def extractor(self, req: ExtractRequest, linker: Linker | None):
        """The task's extractor over the served model (a 400 for a task the model cannot run)."""
        st = self.state
        try:
            if st.byte_level:  # BioMedLM: PubMedQA in the generative format, as `biogpt extract`
                return GenerativeExtractor(st.model, st.tok, req.task, model_info=st.model_info)
            return Extractor(st.model, st.tok, req.task, grounded=req.grounded, model_info=st.model_info,
                             linker=linker, linked=req.linked)  # fmt: skip
        except (BioGPTError, ValueError) as e:
            raise APIError(400, str(e), param="task") from None

    async def run(self, ex, docs: list[Document], request: Request) -> list[dict] | None:
        """ex.extract over docs in the scheduler's thread, one batch of documents per call so that decoding
        steps of other requests run in between; the documents hold queue places until done (429 when the queue
        has no room), and a client that went away stops it between batches (None)."""
        sch, size = self.state.scheduler, max(1, getattr(ex, "batch_size", 8))
        try:
            sch.reserve(len(docs))
        except QueueFull as e:
            raise APIError(429, str(e), "rate_limit_error", headers={"Retry-After": "1"}) from None
        try:
            records: list[dict] = []
            for b in range(0, len(docs), size):
                if await request.is_disconnected():
                    return None
                part = docs[b : b + size]
                records += await asyncio.wrap_future(sch.call(lambda part=part: ex.extract(part)))
            return records
        finally:
            sch.release(len(docs))


def documents(req: ExtractRequest) -> list[Document]:
    """The request's documents as the mining pipeline reads them, within MAX_EXTRACT_DOCS and MAX_EXTRACT_CHARS."""
    if len(req.documents) > MAX_EXTRACT_DOCS:
        raise APIError(400, f"{len(req.documents)} documents in one request; send at most {MAX_EXTRACT_DOCS}",
                       param="documents")  # fmt: skip
    chars = sum(len(x or "") for d in req.documents for x in (d.id, d.text, d.title, d.abstract, d.question))
    if chars > MAX_EXTRACT_CHARS:
        raise APIError(400, f"the documents hold {chars} characters; one request takes at most "
                            f"{MAX_EXTRACT_CHARS}", param="documents")  # fmt: skip
    docs = []
    for d in req.documents:
        if d.text is not None and (d.title is not None or d.abstract is not None):
            raise APIError(400, f"document {d.id!r}: give either text or title + abstract", param="documents")
        if d.text is not None:
            docs.append(Document(d.id, [Passage("text", 0, d.text)], question=d.question))
        elif d.title is not None or d.abstract is not None:
            docs.append(title_abstract(d.id, d.title or "", d.abstract or "", question=d.question))
        else:
            raise APIError(400, f"document {d.id!r} has no text (give text, or title and abstract)",
                           param="documents")  # fmt: skip
    return docs
