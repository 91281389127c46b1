"""The scheduler's thread and what other threads may ask of it: queue admission (all or none, `QueueFull`),
work reserved against the queue, calls run between two steps, cancellation, start / stop / wait_idle, and the
tests' hold point. `Scheduler` (generation/scheduler.py) adds the sequences and the decoding step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from biogpt.errors import GenerationError

log = logging.getLogger("biogpt.generation.scheduler")


class QueueFull(GenerationError):
    """More sequences waiting than the scheduler admits: the client should retry later."""


class Worker:
    """The thread side of the scheduler; a subclass sets `running`, `prefilling` and `cache` users and defines
    `step`, `_drop_cancelled` and `_finish`."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.running: list = []  # running[r] owns cache row r
        self.prefilling: list = []  # admitted, prompt not yet fully in
        self.waiting: deque = deque()
        self.reserved = 0  # queue places held by `reserve`
        self.calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._cancel_all = False
        self._thread: threading.Thread | None = None
        self._hold = _hold_point()

    def _room(self, n: int) -> None:
        """QueueFull unless n more fit the queue (the caller holds the lock)."""
        if len(self.waiting) + self.reserved + n > self.max_queue:
            raise QueueFull(f"the queue is full ({len(self.waiting) + self.reserved} sequences or documents "
                            f"waiting, at most {self.max_queue}); retry later")  # fmt: skip

    def reserve(self, n: int) -> None:
        """Count n units of other work (documents of an extraction run through `call`) against the queue until
        `release(n)`: QueueFull when they do not fit."""
        with self._lock:
            self._room(n)
            self.reserved += n

    def release(self, n: int) -> None:
        with self._lock:
            self.reserved -= n

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn() in the scheduler's thread between two steps (it may use the model alone: e.g. a batch of
        task extraction); its result or exception arrives in the Future."""
        fut: Future = Future()
        with self._lock:
            self.calls.append((fn, fut))
        self._wake.set()
        return fut

    def cancel(self, seqs: Sequence) -> None:
        """Stop these sequences; their rows are freed at the next step."""
        for s in seqs:
            s.cancelled = True
        self._wake.set()

    def cancel_all(self) -> None:
        """Stop every sequence queued, prefilling or running (a shutdown deadline). The scheduler's own thread
        marks them before its next step: a snapshot taken here could miss one that moves from `prefilling` to
        `running` between reading the two lists."""
        self._cancel_all = True
        self._wake.set()

    @property
    def queue_length(self) -> int:
        return len(self.waiting) + self.reserved

    @property
    def batch_size(self) -> int:
        return len(self.running)

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.running or self.calls)

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="biogpt-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread; sequences still in it end as cancelled. `timeout`: seconds to wait for the step in
        progress (a long extraction or beam search); past it the daemon thread is left to end with the process,
        so that a shutdown deadline holds."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the scheduler's step did not end within %gs; not waiting for it", timeout)
                for s in list(self.running) + self.prefilling + list(self.waiting):
                    s.cancelled = True
                return
            self._thread = None
        for s in list(self.running) + self.prefilling + list(self.waiting):
            self._finish(s, "cancelled")
        for _, fut in self.calls:
            fut.cancel()
        self.calls.clear()
        self.running, self.prefilling = [], []
        self.waiting.clear()
        self.cache.length = 0

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (True), or `timeout` seconds passed (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.idle:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def _loop(self) -> None:
        while not self._stop:
            if self._cancel_all:
                self._cancel_all = False
                with self._lock:
                    everyone = list(self.waiting) + self.prefilling + list(self.running)
                self.cancel(everyone)
                self._drop_cancelled()
            if self.idle:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if self._held():  # tests only: decode nothing, but still free what is cancelled
                self._drop_cancelled()
                self._wake.wait(0.02)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as e:  # a bug or an out-of-memory: fail what is in flight, keep serving
                log.exception("scheduler step failed")
                for s in list(self.running) + self.prefilling:
                    self._finish(s, "error", error=f"generation failed: {e}")
                self.running, self.prefilling = [], []
                self.cache.length = 0

    def _held(self) -> bool:
        """The tests' hold point (see `_hold_point`) is reached: a running sequence has its N tokens and the
        hold file exists."""
        if self._hold is None or not self.running:
            return False
        n, path = self._hold
        return any(len(s.generated) >= n for s in self.running) and os.path.exists(path)

    def _run_calls(self) -> None:
        """Run the queued `call`s, each result or exception into its Future."""
        while self.calls:
            with self._lock:
                fn, fut = self.calls.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as e:
                    fut.set_exception(e)


HOLD_ENV = "BIOGPT_TEST_HOLD"


def _hold_point() -> tuple[int, str] | None:
    """Tests' fault-injection point: with $BIOGPT_TEST_HOLD=N:PATH, once a running sequence has generated N
    tokens the scheduler decodes nothing more while the file PATH exists (cancellations and shutdown still act),
    so that a request is still running at a known token, however fast the machine, until the test lets it go."""
    n, _, path = os.environ.get(HOLD_ENV, "").partition(":")
    return (int(n), path) if n.isdigit() and path else None
