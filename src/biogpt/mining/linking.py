"""Linking extracted entities to database identifiers: a dictionary from names to identifiers per entity type.

A name is looked up as the BioGPT evaluation looks names up (`biogpt eval bc5cdr` maps an output name through
the split's `*.entities.json`), up to case and runs of whitespace: the `exact` link. Failing that, in order:
- `normalised`: whitespace removed (Moses spacing: "tnf - alpha" is "tnf-alpha"), then the RE scorer's
  normalisation (`biogpt.tasks.ddi.normalize_name`: a trailing digit as a Roman numeral, `-type` dropped,
  only ASCII letters and digits kept);
- `parenthesis`: a name ending in a parenthesis, "long form (ABBR)", linked through ABBR or through the long
  form, the two ways the RE scorer also reads such names;
- `abbreviation`: an abbreviation defined in the same document ("... cyclosporin A (CsA) ..."), linked through
  its long form (the words before the parenthesis, starting with the abbreviation's first letter).
A normalised key two different identifiers share links to neither; an unlinked entity keeps `id: None`, never
a guess. Each link records how it was made.

Dictionaries: BioGPT's `*.entities.json` (`{"chemical2id": {name: id}, "disease2id": {...}}`), a TSV of
`name<TAB>type<TAB>identifier` lines, or PubTator files (names learned from their annotated mentions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from biogpt import jsonfile
from biogpt.errors import InputError
from biogpt.mining.readers import Document, detect_format, read_documents
from biogpt.tasks.ddi import _ROMAN

NO_ID = "-1"  # the BC5CDR / PubTator convention for a mention without an identifier
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
MAX_NAME = 1000  # characters: longer "names" in a dictionary or an output are not names


class Link(NamedTuple):
    """An entity's identifier (None: unlinked), its CURIE where the namespace is known, and how it was found
    (a tuple: a million are built at load)."""

    id: str | None
    curie: str | None
    how: str | None


UNLINKED = Link(None, None, None)
_AMBIGUOUS = Link(None, None, "ambiguous")  # a normalised key that two identifiers share


def exact_key(name: str) -> str:
    """The evaluation's lookup key, up to case and runs of whitespace."""
    return " ".join(name.casefold().split())


def normal_key(name: str) -> str:
    """The fallback key: lowercased, no whitespace (Moses spacing), then the RE scorer's name normalisation,
    `biogpt.tasks.ddi.normalize_name` (inlined for speed; the tests check they agree), lowercased again."""
    s = "".join(name.lower().split())
    if len(s) > 2 and s[-1] in _ROMAN and not s[-2].isnumeric():
        s = s[:-1] + _ROMAN[s[-1]].lower()
    return _NOT_ALNUM.sub("", s.replace("-type", ""))


def _is_mesh(p: str) -> bool:
    """A bare MeSH descriptor or supplementary concept id: D or C and 6 to 9 ASCII digits (no regex: hot)."""
    return 7 <= len(p) <= 10 and p[0] in "CD" and p[1:].isdigit() and p.isascii()


def curie(identifier: str) -> str | None:
    """`MESH:D008012` for a bare MeSH id; an identifier that already has a prefix is its own CURIE; composite
    ids (`D001|D002`, as the CDR corpus writes them) each get the prefix; other bare ids have no known one."""
    parts = identifier.split("|") if "|" in identifier else (identifier,)
    if all(":" in p for p in parts):
        return identifier
    if all(_is_mesh(p) for p in parts):
        return "|".join("MESH:" + p for p in parts)
    return None


class Linker:
    """Names -> identifiers per entity type (types compared case-insensitively: `Chemical`, `chemical`)."""

    def __init__(self, fallback: bool = True) -> None:
        self.fallback = fallback  # False: exact links only, as `biogpt eval` maps names
        # type -> key -> the finished Link (built once, at load: linking is a lookup)
        self._exact: dict[str, dict[str, Link]] = {}  # exact key -> link (UNLINKED: listed without an id)
        self._normal: dict[str, dict[str, Link]] = {}  # normalised key -> link (_AMBIGUOUS: two ids)
        self.names = 0

    def types(self) -> list[str]:
        return sorted(self._exact)

    def add(self, name: str, kind: str, identifier: str) -> None:
        """One dictionary entry; the first identifier of a name wins, except that a real identifier replaces
        NO_ID (a name the curators left without one in one file may have one in another)."""
        key, kind = exact_key(name), kind.lower()
        if not key or len(key) > MAX_NAME:
            return
        identifier = identifier.strip() or NO_ID
        table = self._exact.setdefault(kind, {})
        old = table.get(key)
        if old is not None and not (old is UNLINKED and identifier != NO_ID):
            return
        self.names += old is None
        if identifier == NO_ID:
            table[key] = UNLINKED
            return
        cur = curie(identifier)
        table[key] = Link(identifier, cur, "exact")
        normal, nk = self._normal.setdefault(kind, {}), normal_key(key)
        if nk:
            prev = normal.get(nk)
            normal[nk] = Link(identifier, cur, "normalised") if prev is None or prev.id == identifier else _AMBIGUOUS

    def _lookup(self, name: str, kind: str) -> Link | None:
        """exact, then normalised; None when neither knows the name."""
        found = self._exact[kind].get(exact_key(name))
        if found is not None or not self.fallback:
            return found
        found = self._normal.get(kind, {}).get(normal_key(name))
        return None if found is None or found is _AMBIGUOUS else found

    def link(self, name: str, kind: str, text: str = "") -> Link:
        """The identifier of `name` as an entity of type `kind`; `text` (the document) lets an abbreviation
        defined there link through its long form."""
        kind = kind.lower()
        if kind not in self._exact or len(name) > MAX_NAME:
            return UNLINKED
        found = self._lookup(name, kind)
        if found is not None or not self.fallback:
            return found or UNLINKED
        m = _PAREN.match(name.strip())
        if m:
            for part in (m.group(2), m.group(1)):
                found = self._lookup(part, kind)
                if found is not None and found.id is not None:
                    return Link(found.id, found.curie, "parenthesis")
        if text:
            for long_form in long_forms(name, text):
                found = self._lookup(long_form, kind)
                if found is not None and found.id is not None:
                    return Link(found.id, found.curie, "abbreviation")
        return UNLINKED

    def is_name(self, name: str, kind: str) -> bool:
        """Does the dictionary hold `name` (exactly or normalised) with an identifier, as type `kind`?"""
        kind = kind.lower()
        found = self._lookup(name, kind) if kind in self._exact else None
        return found is not None and found.id is not None


_PAREN = re.compile(r"^(.+?)\s*\(\s*([^()]+?)\s*\)$")


def long_forms(abbr: str, text: str, max_words: int = 8) -> list[str]:
    """Long forms `text` defines for `abbr` ("cyclosporin A (CsA)"): the words before each "(abbr)", the
    shortest first, each starting with the abbreviation's first letter and no longer than `max_words`."""
    abbr = abbr.strip()
    if not abbr or len(abbr) > 20 or not abbr[0].isalnum():
        return []
    out: list[str] = []
    pattern = re.compile(r"\(\s*" + re.escape(abbr) + r"\s*\)", re.IGNORECASE)
    for m in pattern.finditer(text):
        words = text[max(0, m.start() - 200) : m.start()].split()[-max_words:]
        for k in range(1, len(words) + 1):
            cand = " ".join(words[-k:])
            if cand[:1].lower() == abbr[0].lower() and cand not in out:
                out.append(cand)
    return out


# ---------------------------------------------------------------------------------------------------
# dictionary files


def _entities_json(path: Path, linker: Linker) -> None:
    """BioGPT / BC5CDR `*.entities.json`: {"chemical2id": {name: id}, "disease2id": {...}}."""
    try:
        data = jsonfile.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a JSON dictionary ({e})") from None
    data = data if isinstance(data, dict) else {}
    tables = {k: v for k, v in data.items() if isinstance(v, dict) and k.endswith("2id")}
    if not tables:
        raise InputError(f'{path}: a JSON dictionary needs "<type>2id" maps, as BioGPT\'s *.entities.json')
    for key, table in tables.items():
        kind = key[: -len("2id")]
        for name, ident in table.items():
            if isinstance(name, str) and isinstance(ident, str):
                linker.add(name, kind, ident)


def _tsv(path: Path, linker: Linker) -> None:
    """`name<TAB>type<TAB>identifier` lines; blank lines and `#` comments skipped."""
    with open(path, encoding="utf-8", errors="strict", newline="\n") as f:
        try:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith("#"):
                    continue
                cols = line.split("\t")
                if len(cols) != 3:
                    raise InputError(f"{path}:{n}: expected name<TAB>type<TAB>identifier, got {len(cols)} columns")
                linker.add(cols[0], cols[1], cols[2])
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 ({e})") from None


def _pubtator(path: Path, linker: Linker) -> None:
    """Names learned from a PubTator file's annotated mentions (type and identifier columns)."""
    for item in read_documents(path, "pubtator"):
        if isinstance(item, Document):
            for a in item.annotations:
                ident = a.get("infons", {}).get("identifier", "")
                if ident and a.get("type"):
                    linker.add(a["text"], a["type"], ident)


def load(paths: Iterable[str | Path], linker: Linker | None = None, fallback: bool = True) -> Linker:
    """A linker from dictionary files, in order (earlier files win): `.json` as BioGPT's `*.entities.json`,
    `.tsv` as name/type/identifier, anything else PubTator."""
    linker = linker or Linker(fallback)
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{path}: dictionary file not found")
        suffix = path.suffix.lower()
        if suffix == ".json":
            _entities_json(path, linker)
        elif suffix in (".tsv", ".tab"):
            _tsv(path, linker)
        elif detect_format(path) == "pubtator":
            _pubtator(path, linker)
        else:
            raise InputError(f"{path}: a dictionary is *.entities.json, a .tsv (name, type, identifier) or PubTator")
    return linker


DEFAULTS = {"bc5cdr": "bc5cdr.entities.json"}  # task -> the dictionary shipped in biogpt/mining/dictionaries/


def default_linker(task: str, fallback: bool = True) -> Linker | None:
    """The dictionary the package ships for `task` (BC5CDR: chemicals and diseases to MeSH, from the BC5CDR
    training and development annotations, never the test split), or None."""
    name = DEFAULTS.get(task)
    if name is None:
        return None
    return load([Path(__file__).parent / "dictionaries" / name], fallback=fallback)
