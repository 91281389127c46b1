// The extraction page: reads a pasted text or a dropped file, calls POST /v1/extract, and shows the records
// (entities highlighted in the text, relations as a table, the raw output on demand). Downloads are the
// server's own renderings (/v1/extract's `data`), so they equal `biogpt extract`'s bytes. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const INFO = JSON.parse($("biogpt-info").textContent);
const BATCH = 8; // documents per /v1/extract request
const EXTENSIONS = { jsonl: "jsonl", bioc_json: "json", pubtator: "pubtator" };
let fileDocs = null; // documents read from a dropped or chosen file, or null: the text box is the input
let last = null; // {task, grounded, documents, records, data: {format: rendered text}}

function setStatus(message, error = false) {
  $("status").textContent = message;
  $("status").className = error ? "error" : "";
}

async function api(path, body, raw = false) {
  const headers = { "Content-Type": raw ? "application/octet-stream" : "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { method: "POST", headers, body: raw ? body : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const why = data && data.error ? data.error.message : response.statusText;
    throw new Error(`${response.status}: ${why}`);
  }
  return data;
}

function documentsToRun() {
  if (fileDocs !== null) return fileDocs;
  const text = $("text").value;
  if (!text.trim()) throw new Error("paste a text or choose a file first");
  const doc = { id: "1", text };
  if ($("task").value === "pubmedqa") doc.question = $("question").value;
  return [doc];
}

// One run over every document, BATCH at a time: records and the rendered output in `format`
async function extract(task, grounded, documents, format, progress) {
  const records = [];
  let data = format === "bioc_json" ? [] : "";
  for (let i = 0; i < documents.length; i += BATCH) {
    if (progress) progress(i, documents.length);
    const out = await api("/v1/extract", { task, grounded, format, documents: documents.slice(i, i + BATCH) });
    records.push(...out.records);
    data = format === "bioc_json" ? data.concat(out.data) : data + out.data;
  }
  return { records, data };
}

async function run(event) {
  event.preventDefault();
  const button = $("run");
  let documents;
  try { documents = documentsToRun(); } catch (e) { setStatus(e.message, true); return; }
  const task = $("task").value, grounded = $("grounded").checked;
  button.disabled = true;
  try {
    const n = documents.length;
    const out = await extract(task, grounded, documents, "jsonl",
      (i, total) => setStatus(`Extracting: ${i} of ${total} document${total === 1 ? "" : "s"} done…`));
    last = { task, grounded, documents, records: out.records, data: { jsonl: out.data } };
    render(out.records);
    const rels = out.records.reduce((a, r) => a + (r.relations || []).length, 0);
    const ents = out.records.reduce((a, r) => a + (r.entities || []).filter((e) => e.grounded).length, 0);
    setStatus(`Done: ${n} document${n === 1 ? "" : "s"}, ${rels} relation${rels === 1 ? "" : "s"}, ` +
              `${ents} entit${ents === 1 ? "y" : "ies"} located in the text.`);
  } catch (e) {
    setStatus("Extraction failed: " + e.message, true);
  } finally {
    button.disabled = false;
  }
}

// --- rendering ----------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function typeClasses(records) {
  const classes = new Map();
  for (const r of records) for (const e of r.entities || []) {
    if (!classes.has(e.type)) classes.set(e.type, "t" + (classes.size % 5));
  }
  return classes;
}

// The text with every located mention as <mark data-start data-end data-type> (code-point offsets, as in the
// JSONL). Mentions inside another are nested; one that crosses another's end is cut there (its data-start
// and data-end still give its whole span).
function highlighted(text, entities, classes) {
  const cps = Array.from(text);
  const spans = [];
  for (const e of entities || []) for (const s of e.spans || []) spans.push({ ...s, type: e.type, entity: e });
  spans.sort((a, b) => a.start - b.start || b.end - a.end);
  const root = el("div", { class: "text" });
  const stack = [{ node: root, end: Infinity }];
  let pos = 0;
  const advance = (upto) => {
    while (pos < upto) {
      const top = stack[stack.length - 1];
      const stop = Math.min(upto, top.end);
      if (stop > pos) { top.node.append(cps.slice(pos, stop).join("")); pos = stop; }
      if (pos >= top.end && stack.length > 1) stack.pop();
    }
    while (stack.length > 1 && stack[stack.length - 1].end <= pos) stack.pop();
  };
  for (const s of spans) {
    advance(s.start);
    const mark = el("mark", { "data-start": String(s.start), "data-end": String(s.end), "data-type": s.type,
                              "data-entity": s.entity.ref ?? s.entity.id, class: classes.get(s.type) || "t0",
                              title: `${s.type}: ${s.entity.text}` + (s.entity.curie ? ` (${s.entity.curie})` : "") });
    const parent = stack[stack.length - 1];
    parent.node.append(mark);
    stack.push({ node: mark, end: Math.min(s.end, parent.end) });
  }
  advance(cps.length);
  return root;
}

function identifier(entity) {
  // the database identifier as a CURIE (MESH:D008012), with how the name was linked (exact, normalised, ...)
  if (!entity || !(entity.curie || entity.id) || entity.ref === undefined) return "";
  const label = entity.curie || entity.id;
  return entity.link ? el("span", { title: `linked: ${entity.link}` }, label) : label;
}

function confidence(score) {
  if (typeof score !== "number") return "";
  const p = 100 * Math.exp(score);
  return `${p < 0.1 ? "< 0.1" : p.toFixed(1)}% (log-prob ${score.toFixed(3)})`;
}

function table(caption, head, rows) {
  const t = el("table", {}, el("caption", {}, caption));
  t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))));
  const body = el("tbody");
  for (const cells of rows) {
    body.append(el("tr", {}, ...cells.map((c, i) => el("td", i === cells.length - 1 ? { class: "num" } : {}, c))));
  }
  t.append(body);
  return t;
}

function renderRecord(r, classes) {
  const box = el("article", { class: "doc", "aria-label": `Document ${r.id}` }, el("h2", {}, r.id));
  if (r.skipped) { box.append(el("p", { class: "note" }, "Skipped: " + r.skipped)); return box; }
  box.append(highlighted(r.text, r.entities, classes));
  const byId = new Map((r.entities || []).map((e) => [e.ref ?? e.id, e]));  // relations name entities by ref
  const name = (id) => {
    const e = byId.get(id);
    if (!e) return id;
    return e.grounded ? e.text : el("span", { class: "ungrounded", title: "not found in the text" }, e.text + " (not in the text)");
  };
  if (r.relations && r.relations.length) {
    box.append(table("Relations", ["Head", "Head identifier", "Relation", "Tail", "Tail identifier", "Confidence"],
      r.relations.map((x) => [name(x.head), identifier(byId.get(x.head)), x.type, name(x.tail),
                              identifier(byId.get(x.tail)), confidence(x.score)])));
  } else if (r.entities !== undefined && !r.labels && !r.answer) {
    box.append(el("p", { class: "note" }, "No relations."));
  }
  if (r.labels && r.labels.length) {
    box.append(table("Labels", ["Label", "Confidence"], r.labels.map((x) => [x.label, confidence(x.score)])));
  }
  if (r.answer) box.append(table("Answer", ["Answer", "Confidence"], [[r.answer.text, confidence(r.answer.score)]]));
  const missing = (r.entities || []).filter((e) => !e.grounded);
  if (missing.length) {
    box.append(el("p", { class: "note" }, "Named by the model but not found in the text: " +
                                          missing.map((e) => `${e.text} (${e.type})`).join(", ")));
  }
  if (r.output !== undefined) {
    box.append(el("details", {}, el("summary", {}, "Raw model output"), el("pre", {}, r.output)));
  }
  return box;
}

function render(records) {
  const classes = typeClasses(records);
  const legend = $("legend");
  legend.replaceChildren(...[...classes].map(([type, cls]) => el("span", {}, el("mark", { class: cls, "data-legend": type }, type))));
  legend.hidden = classes.size === 0;
  $("documents").replaceChildren(...records.map((r) => renderRecord(r, classes)));
  $("result").hidden = false;
}

// --- downloads: the server's renderings, a BioC collection wrapped as `biogpt extract` writes it ---------

// JSON as Python's json.dumps(ensure_ascii=False) writes it (", " and ": " separators), for BioC documents
function pyJSON(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "[" + v.map(pyJSON).join(", ") + "]";
  if (typeof v === "object") {
    return "{" + Object.entries(v).map(([k, x]) => JSON.stringify(k) + ": " + pyJSON(x)).join(", ") + "}";
  }
  return JSON.stringify(v);
}

function biocCollection(documents, task, records) {
  const model = records.length && records[0].model ? String(records[0].model.name) : "";
  const infons = { task, model, biogpt_version: INFO.version };
  const head = pyJSON({ ...INFO.collection, infons });
  return head.slice(0, -1) + ', "documents": [\n' + documents.map(pyJSON).join(",\n") + "\n]}\n";
}

async function download(format) {
  if (!last) return;
  try {
    if (last.data[format] === undefined) {
      setStatus("Preparing the download…");
      last.data[format] = (await extract(last.task, last.grounded, last.documents, format)).data;
    }
    const data = last.data[format];
    const text = format === "bioc_json" ? biocCollection(data, last.task, last.records) : data;
    const type = format === "bioc_json" ? "application/json" : format === "jsonl" ? "application/x-ndjson" : "text/plain";
    const url = URL.createObjectURL(new Blob([text], { type: type + ";charset=utf-8" }));
    const a = el("a", { href: url, download: `biogpt-${last.task}.${EXTENSIONS[format]}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    setStatus(`Downloaded ${a.getAttribute("download")}.`);
  } catch (e) {
    setStatus("Download failed: " + e.message, true);
  }
}

// --- files: read by the server with biogpt's readers ----------------------------------------------------

async function readFile(file) {
  if (!file) return;
  setStatus(`Reading ${file.name}…`);
  try {
    const out = await api("/v1/documents", file, true);
    fileDocs = out.documents;
    const bad = out.problems.length ? `, ${out.problems.length} malformed record(s) skipped: ${out.problems.slice(0, 3).join("; ")}` : "";
    $("file-note").textContent = `${file.name}: ${fileDocs.length} document(s) to extract${bad}. Typing in the text box uses the text instead.`;
    setStatus(`Read ${fileDocs.length} document(s) from ${file.name}. Press Extract.`);
  } catch (e) {
    fileDocs = null;
    setStatus(`Could not read ${file.name}: ${e.message}`, true);
  }
}

function setUp() {
  $("form").addEventListener("submit", run);
  $("text").addEventListener("input", () => { fileDocs = null; });
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(e); });
  $("file").addEventListener("change", () => readFile($("file").files[0]));
  $("task").addEventListener("change", () => { $("question-row").hidden = $("task").value !== "pubmedqa"; });
  for (const b of document.querySelectorAll("button[data-format]")) {
    b.addEventListener("click", () => download(b.dataset.format));
  }
  document.addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("dragging"); });
  document.addEventListener("dragleave", () => $("drop").classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    $("drop").classList.remove("dragging");
    if (e.dataTransfer && e.dataTransfer.files.length) readFile(e.dataTransfer.files[0]);
  });
}

setUp();
