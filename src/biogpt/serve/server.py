"""Running the app under uvicorn with a graceful drain: the first SIGTERM / SIGINT stops admission (503 to new
requests and /health), lets running requests finish for up to `shutdown_timeout` seconds, cancels what is
left, then lets uvicorn close; a second signal exits at once. A model that fails to load stops the server:
it could only ever answer 503, and a supervisor should see the process fail instead."""

from __future__ import annotations

import sys
import threading
import time

import uvicorn
from fastapi import FastAPI


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown_timeout: float):
        super().__init__(config)
        self.state = config.app.state.biogpt
        self.shutdown_timeout = shutdown_timeout

    def handle_exit(self, sig, frame) -> None:
        if self.state.draining:
            return super().handle_exit(sig, frame)
        # not recorded as a captured signal: uvicorn would re-raise it after shutdown, and the exit would be
        # "killed by SIGTERM" instead of 0
        self.state.draining = True
        threading.Thread(target=self._drain, name="biogpt-drain", daemon=True).start()

    def _drain(self) -> None:
        sch = self.state.scheduler
        if sch is not None and not sch.wait_idle(self.shutdown_timeout):
            print(f"shutdown timeout ({self.shutdown_timeout:g}s): cancelling what is still running", file=sys.stderr)
            sch.cancel_all()
            # the cancelled leave before the scheduler's next step, which reports each one (the streams' error
            # frames) before uvicorn starts closing; the bound is the step in progress, as in the lifespan's stop
            sch.wait_idle(5)
        # the streams write their last frames on the event loop after the scheduler reported them: uvicorn's
        # own close would cut a response still being written, so wait (bounded) for the requests to end
        end = time.monotonic() + 5
        while self.state.in_flight and time.monotonic() < end:
            time.sleep(0.01)
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.state.load_error is not None:
            self.should_exit = True
        return await super().on_tick(counter)


def run(app: FastAPI, host: str, port: int, shutdown_timeout: float, log_level: str = "info") -> str | None:
    """Serves until drained; returns why the model failed to load, or None."""
    # the event loop shares the GIL with the scheduler's and the tokenizer's threads: hand it over every
    # millisecond (Python's default: 5 ms) so that /health and short requests answer while they work
    sys.setswitchinterval(0.001)
    # the drain already waited for the requests; uvicorn then only closes idle connections
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    server = DrainingServer(config, shutdown_timeout)
    server.run()
    return server.state.load_error
