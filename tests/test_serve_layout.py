"""The server's shape: serve/app.py's routes are thin (each a few lines calling a service); tests/test_layout.py
keeps every module and function short."""

import ast
from pathlib import Path

SERVE = Path(__file__).resolve().parents[1] / "src" / "biogpt" / "serve"
ROUTE_LINES = 12  # a route's body: check, call its service, answer
ROUTE_METHODS = {"get", "post", "api_route"}


def routes(tree: ast.Module) -> dict[str, int]:
    """name -> body lines of every function decorated with @app.get / .post / .api_route."""
    out = {}
    for f in ast.walk(tree):
        if not isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for d in f.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ROUTE_METHODS:
                out[f.name] = f.body[-1].end_lineno - f.body[0].lineno + 1
    return out


def test_app_routes_are_thin():
    found = routes(ast.parse((SERVE / "app.py").read_text()))
    # health, metrics, models, tokenize, detokenize, chat, completions, extract
    assert len(found) == 8, sorted(found)
    assert {k: v for k, v in found.items() if v > ROUTE_LINES} == {}


def test_the_route_counter_sees_a_fat_route():
    fat = "@app.post('/x')\nasync def x():\n" + "".join(f"    a{i} = {i}\n" for i in range(ROUTE_LINES + 1))
    assert routes(ast.parse(fat)) == {"x": ROUTE_LINES + 1}
