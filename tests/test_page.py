"""The extraction page `biogpt serve` shows at `/`, driven in a real browser: Playwright on the Chromium Debian
packages (/usr/bin/chromium; `apt-get install chromium`), against a real `biogpt serve` subprocess with an API
key. The highlighted mentions must be the JSONL's spans, and every download must equal `biogpt extract`'s bytes
for the same document. Set BIOGPT_PAGE_SCREENSHOT=PATH to keep the screenshot (the README's docs/page.png)."""

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-test-key"
ABSTRACT = (ROOT / "examples" / "abstract.txt").read_text(encoding="utf-8").strip()
SAMPLE = ROOT / "examples" / "pubmed_sample.xml"


@pytest.fixture(scope="module")
def server():
    """`biogpt serve` (the demo model) with an API key on a free port; its base URL once /health says ok."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "biogpt.cli", "serve", "--port", str(port), "--api-key", KEY, "--log-level", "warning",
           "--threads", "1"]  # as the reference `biogpt extract` runs: equal float sums need equal threads
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "the page tests need Debian's Chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def cli_outputs(tmp_path: Path, inp: Path, extra=()) -> dict[str, bytes]:
    """`biogpt extract --task bc5cdr --grounded` over `inp` in the page's three download formats."""
    out = {}
    for fmt, ext in (("jsonl", "jsonl"), ("bioc_json", "json"), ("pubtator", "pubtator")):
        path = tmp_path / f"cli.{ext}"
        cmd = [sys.executable, "-m", "biogpt.cli", "extract", "--task", "bc5cdr", "--grounded", str(inp), "-o",
               str(path), "--quiet", "--threads", "1", *extra]  # one thread, as the server: the same float sums
        done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        out[fmt] = path.read_bytes()
    return out


def open_page(browser, server):
    page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page.set_default_timeout(180_000)
    page.goto(server + "/")
    return page


def test_page_pasted_abstract_highlights_and_downloads_equal_the_cli(browser, server, tmp_path):
    doc = tmp_path / "doc.jsonl"
    doc.write_text(json.dumps({"id": "1", "text": ABSTRACT}, ensure_ascii=False) + "\n", encoding="utf-8")
    want = cli_outputs(tmp_path, doc)
    record = json.loads(want["jsonl"])
    spans = sorted((s["start"], s["end"], e["type"], s["text"]) for e in record["entities"] for s in e["spans"])
    assert spans  # the demo model locates entities in the example abstract

    page = open_page(browser, server)
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("textbox", name="Text").fill(ABSTRACT)
    page.get_by_label("Task").select_option("bc5cdr")
    assert page.get_by_label("grounded decoding").is_checked()
    page.get_by_role("button", name="Extract").focus()
    page.keyboard.press("Enter")  # keyboard only
    page.wait_for_selector("text=Done:")
    marks = page.eval_on_selector_all(
        "#documents mark[data-start]",
        "ms => ms.map(m => [Number(m.dataset.start), Number(m.dataset.end), m.dataset.type, m.textContent])")
    assert sorted(tuple(m) for m in marks) == spans
    relations = page.locator("#documents table tbody tr")
    assert relations.count() == len(record["relations"])
    entities = {e["ref"]: e for e in record["entities"]}
    first = relations.nth(0).locator("td").all_inner_texts()
    r = record["relations"][0]
    head, tail = entities[r["head"]], entities[r["tail"]]
    assert first[0] == head["text"] and first[2] == r["type"] and first[3] == tail["text"]
    assert first[1] == (head["curie"] or "") and first[4] == (tail["curie"] or "")  # the linked identifiers
    page.get_by_text("Raw model output").click()
    assert page.locator("details pre").inner_text() == record["output"]
    for fmt, label in (("jsonl", "JSONL"), ("bioc_json", "BioC JSON"), ("pubtator", "PubTator")):
        with page.expect_download() as d:
            page.get_by_role("button", name=label, exact=True).click()
        assert Path(d.value.path()).read_bytes() == want[fmt], fmt
        assert d.value.suggested_filename == {"jsonl": "biogpt-bc5cdr.jsonl", "bioc_json": "biogpt-bc5cdr.json",
                                              "pubtator": "biogpt-bc5cdr.pubtator"}[fmt]  # fmt: skip
    shot = os.environ.get("BIOGPT_PAGE_SCREENSHOT")
    page.screenshot(path=shot or str(tmp_path / "page.png"), full_page=True)
    page.close()


def test_page_reads_a_dropped_pubmed_file_as_the_cli_does(browser, server, tmp_path):
    want = cli_outputs(tmp_path, SAMPLE)
    page = open_page(browser, server)
    page.get_by_label("API key").fill(KEY)
    page.locator("#file").set_input_files(str(SAMPLE))
    page.wait_for_selector("text=Read 5 document(s)")
    page.get_by_role("button", name="Extract").click()
    page.wait_for_selector("text=Done: 5 documents")
    assert page.locator("article.doc").count() == 5
    with page.expect_download() as d:
        page.get_by_role("button", name="JSONL", exact=True).click()
    assert Path(d.value.path()).read_bytes() == want["jsonl"]
    with page.expect_download() as d:
        page.get_by_role("button", name="PubTator", exact=True).click()
    assert Path(d.value.path()).read_bytes() == want["pubtator"]
    page.close()


def test_page_without_the_key_says_so(browser, server):
    page = open_page(browser, server)  # the page itself needs no key
    page.get_by_role("textbox", name="Text").fill("Aspirin induced bleeding.")
    page.get_by_role("button", name="Extract").click()
    page.wait_for_selector("#status.error")
    assert "401" in page.locator("#status").inner_text() and "API key" in page.locator("#status").inner_text()
    page.close()


def test_page_files_and_documents_route(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    for path, kind in (("/", "text/html"), ("/page.js", "text/javascript"), ("/page.css", "text/css")):
        r = httpx.get(server + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert '"version"' in httpx.get(server + "/").text and "{{info}}" not in httpx.get(server + "/").text
    assert httpx.post(server + "/v1/documents", content=SAMPLE.read_bytes()).status_code == 401
    ok = httpx.post(server + "/v1/documents", content=SAMPLE.read_bytes(), headers=auth).json()
    assert [d["id"] for d in ok["documents"]] == ["227508", "354896", "435349", "603022", "1601297"]
    gz = httpx.post(server + "/v1/documents", content=gzip.compress(SAMPLE.read_bytes()), headers=auth).json()
    assert gz == ok
    assert set(ok["documents"][0]) == {"id", "title", "abstract"} and ok["problems"] == []
    bad = [(b"", "the file is empty"), (b"<html/>", "neither PubMed"), (b"\x00\x01\x02" * 100, "not text"),
           (b'{"id": "1", "text": "ok"}\n{oops\n', None), (gzip.compress(b"x" * (65 << 20)), "expands beyond 64 MiB"),
           (b"\x1f\x8b" + b"junk" * 10, "damaged .gz")]  # fmt: skip
    for body, message in bad:
        r = httpx.post(server + "/v1/documents", content=body, headers=auth)
        if message is None:  # a malformed record is reported, the rest is read
            assert r.status_code == 200 and len(r.json()["documents"]) == 1 and "not JSON" in r.json()["problems"][0]
        else:
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
            assert "/tmp" not in r.json()["error"]["message"]
    big = httpx.post(server + "/v1/documents", content=b"x" * (2 << 20), headers=auth)
    assert big.status_code == 413
