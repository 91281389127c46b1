"""Regenerate the BC5CDR dictionary shipped in biogpt/mining/dictionaries/ (the default for
`biogpt extract --task bc5cdr`): chemical and disease names to MeSH from the BC5CDR training and development
annotations only (never the test split). Earlier entries win; a real MeSH id replaces a `-1`.

    python scripts/build_bc5cdr_dictionary.py ../shared/data/tasks/BC5CDR \
        src/biogpt/mining/dictionaries/bc5cdr.entities.json
"""

import json
import sys
from pathlib import Path


def merge(root: Path) -> dict[str, dict[str, str]]:
    """{"chemical2id": {...}, "disease2id": {...}} from train then valid."""
    out: dict[str, dict[str, str]] = {"chemical2id": {}, "disease2id": {}}
    for split in ("train", "valid"):
        data = json.loads((root / f"{split}.entities.json").read_text(encoding="utf-8"))
        for key, table in out.items():
            for name, ident in data[key].items():
                if table.get(name, "-1") == "-1":
                    table[name] = ident
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def main() -> None:
    root, dst = Path(sys.argv[1]), Path(sys.argv[2])
    merged = merge(root)
    dst.write_text(json.dumps(merged, ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{dst}: {sum(len(v) for v in merged.values())} names, {dst.stat().st_size} bytes")


if __name__ == "__main__":
    main()
