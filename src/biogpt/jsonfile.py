"""Reading a JSON file a user or a download supplied: the value, or one error of the caller's kind that names the
file and what is wrong with it (unreadable, not UTF-8, not JSON, not an object), never a bare parser traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_DEPTH_MESSAGE = "nested too deeply"


def loads(text: str | bytes) -> Any:
    """`json.loads`, with nesting too deep for the parser (`[[[[...`, which raises RecursionError, not a
    ValueError) reported as the JSONDecodeError every caller already handles."""
    try:
        return json.loads(text)
    except RecursionError:
        doc = text if isinstance(text, str) else ""
        raise json.JSONDecodeError(MAX_DEPTH_MESSAGE, doc, 0) from None


def read_json(path: Path, error: type[Exception]) -> Any:
    """The JSON value in `path`; `error(message)` when it cannot be read or parsed."""
    try:
        return loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: Path, error: type[Exception]) -> dict:
    """The JSON object in `path` (a config, a vocabulary); `error(message)` for anything else."""
    data = read_json(path, error)
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
