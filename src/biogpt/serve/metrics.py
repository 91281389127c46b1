"""Prometheus metrics in the text exposition format (version 0.0.4), written out by hand: a few counters, gauges
read at scrape time, and two latency histograms. No client library needed for so little."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

# seconds: from a few ms (a small model's step) to a minute (a long queue)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cum = 0
        for b, c in zip((*map(repr, self.buckets), "+Inf"), self.counts):
            cum += c
            out.append(f'{self.name}_bucket{{le="{b}"}} {cum}')
        return out + [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {self.count}"]


class Metrics:
    """Requests by route and status, latency histograms, and gauges/counters read from `sources` at scrape time."""

    def __init__(self, sources: dict[str, tuple[str, str, Callable[[], float]]]):
        self.sources = sources  # name -> (type, help, read)
        self.requests: dict[tuple[str, int], int] = {}
        self.ttft = Histogram("biogpt_time_to_first_token_seconds", "Time from submission to the first token.",
                              TTFT_BUCKETS)  # fmt: skip
        self.tpot = Histogram("biogpt_time_per_output_token_seconds", "Time between two tokens of a sequence.",
                              TPOT_BUCKETS)  # fmt: skip
        self._lock = threading.Lock()

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            (self.ttft if name == "ttft" else self.tpot).observe(value)

    def render(self) -> str:
        with self._lock:
            out = ["# HELP biogpt_requests_total Requests by route and HTTP status.",
                   "# TYPE biogpt_requests_total counter"]  # fmt: skip
            for (route, status), n in sorted(self.requests.items()):
                out.append(f'biogpt_requests_total{{route="{route}",status="{status}"}} {n}')
            for name, (kind, help_, read) in self.sources.items():
                out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {read()}"]
            out += self.ttft.lines() + self.tpot.lines()
        return "\n".join(out) + "\n"
