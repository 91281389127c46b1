"""The extraction page `biogpt serve` shows at `/`: static files shipped in the package (serve/static/), no build
step, nothing loaded from elsewhere.

The page calls the server's own API: POST /v1/documents (below) turns a dropped PubMed XML, PubTator, BioC or
JSONL file into documents with the same readers as `biogpt extract`, and POST /v1/extract runs the task on them.
The page's files (FILES) need no API key, so the page can load and ask for one; every API call it makes sends
the key typed into it (kept in the page's memory only).
"""

from __future__ import annotations

import json
import tempfile
import zlib
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

import biogpt
from biogpt.errors import BioGPTError
from biogpt.mining.readers import Problem, read_documents
from biogpt.mining.writers import COLLECTION

STATIC = resources.files("biogpt.serve") / "static"
FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript; charset=utf-8"),
         "/page.css": ("page.css", "text/css; charset=utf-8")}  # fmt: skip
MAX_DOCUMENTS = 10_000  # per dropped file: the page sends them to /v1/extract a few at a time
MAX_EXPANDED = 64 << 20  # a .gz upload may expand to this many bytes (the body itself is --max-body-mb)


def page_html() -> str:
    """index.html with what the page needs to write a BioC collection as `biogpt extract` does."""
    info = json.dumps({"collection": COLLECTION, "version": biogpt.__version__}).replace("<", "\\u003c")
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("{{info}}", info)


def as_request_document(doc) -> dict:
    """A read document as /v1/extract takes it: title + abstract where it is one (its text is title + " " +
    abstract, as PubTator counts offsets), its whole text otherwise."""
    kinds = [p.type for p in doc.passages]
    out = {"id": doc.id}
    if kinds == ["title", "abstract"] and doc.text == doc.title + " " + doc.abstract:
        out.update(title=doc.title, abstract=doc.abstract)
    else:
        out["text"] = doc.text
    if doc.question is not None:
        out["question"] = doc.question
    return out


def gunzip(body: bytes) -> bytes:
    """A gzip upload decompressed here, at most MAX_EXPANDED bytes (a small body may expand enormously)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, MAX_EXPANDED)
    except zlib.error as e:
        raise BioGPTError(f"the file is a damaged .gz ({e})") from None
    if d.unconsumed_tail:
        raise BioGPTError(f"the file expands beyond {MAX_EXPANDED >> 20} MiB; run `biogpt extract` on it")
    return out


def read_upload(body: bytes) -> dict:
    """{"documents": [...], "problems": [...]} of an uploaded file, read as `biogpt extract` reads a file."""
    if body[:2] == b"\x1f\x8b":
        body = gunzip(body)
    with tempfile.TemporaryDirectory(prefix="biogpt-page-") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(body)
        docs, problems = [], []
        try:
            for item in read_documents(path):
                if isinstance(item, Problem):
                    problems.append(str(item).replace("upload", "the file", 1))
                elif not item.deleted:
                    docs.append(as_request_document(item))
                if len(docs) > MAX_DOCUMENTS:
                    raise BioGPTError(f"the file holds more than {MAX_DOCUMENTS} documents; run `biogpt extract` on it")
        except BioGPTError as e:  # name the upload, not the temporary path
            raise BioGPTError(str(e).replace(str(path), "the file")) from None
    return {"documents": docs, "problems": problems}


def register(app: FastAPI, state, fail, off_loop) -> None:
    """Add the page's files and POST /v1/documents to the app; `fail(status, message, param=...)` builds an
    OpenAI error envelope, and `off_loop(fn, *args)` reads an upload in the server's worker thread."""

    @app.get("/")
    async def index():
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-cache"})

    @app.get("/page.js")
    async def script():
        return Response((STATIC / "page.js").read_bytes(), media_type=FILES["/page.js"][1])

    @app.get("/page.css")
    async def style():
        return Response((STATIC / "page.css").read_bytes(), media_type=FILES["/page.css"][1])

    @app.post("/v1/documents")
    async def documents(request: Request):
        body = await request.body()
        if not body.strip():
            raise fail(400, "the file is empty", param="body")
        try:
            return await off_loop(read_upload, body)
        except BioGPTError as e:
            raise fail(400, str(e), param="body") from None
        except UnicodeDecodeError as e:
            raise fail(400, f"the file is not UTF-8 text ({e.reason} at byte {e.start})", param="body") from None
