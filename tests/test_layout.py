"""The package's layering (see docs/layout.md): a module imports only from its own group or below, and
library modules import at the top (no function-local import hiding a cycle). The CLI may import lazily, so
that `biogpt tokenize` does not load PyTorch."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "biogpt"
LEVEL = {"errors": 0, "recipes": 0, "jsonfile": 0, "images": 1, "text": 1, "models": 1, "checkpoints": 2,
         "generation": 2, "backends": 2, "families": 3, "api": 3, "tasks": 3, "training": 4, "mining": 4,
         "serve": 5, "cli": 5}  # fmt: skip


def group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def imports(path: Path):
    """(module imported, line, whether the import sits inside a function) for every `biogpt.*` import."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f) if n is not f}  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("biogpt"):
            names = [node.module] if node.module != "biogpt" else [f"biogpt.{a.name}" for a in node.names]
            for name in names:
                yield name, node.lineno, id(node) in local


def test_modules_import_only_from_below():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        me = group(".".join(rel.parts).removesuffix(".__init__"))
        if me == "":
            continue  # biogpt/__init__.py is the public face: it re-exports from everywhere
        for name, line, in_function in imports(path):
            theirs = group(name)
            if theirs and theirs != me and LEVEL[theirs] > LEVEL[me]:
                bad.append(f"{rel}:{line} ({me}) imports {name} ({theirs})")
            if in_function and me != "cli":
                bad.append(f"{rel}:{line} imports {name} inside a function")
    assert bad == []
