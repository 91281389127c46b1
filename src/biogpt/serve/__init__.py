"""`biogpt serve`: an OpenAI-compatible HTTP server over a continuous-batching scheduler (needs the `serve` extra:
fastapi, uvicorn, pydantic)."""

from biogpt.serve.app import create_app

__all__ = ["create_app"]
