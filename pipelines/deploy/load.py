"""A bounded request loop against a running `electra serve`: `clients` threads, each with its own HTTP connection,
send `requests` POST /predict requests in all and record every answer and its latency. A 503 (no replica could
take the request, e.g. while one is restarting) or a dropped connection is retried once; anything else that is not
a 200 with one prediction per input counts as failed. Used by the serving tests and benchmarks/serve_load.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests as http


@dataclass
class LoadReport:
    requests: int
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    answers: dict[int, list[dict]] = field(default_factory=dict)
    """Request index -> its predictions, for every request answered."""
    failures: dict[int, str] = field(default_factory=dict)
    """Request index -> what went wrong (status and body, or the exception)."""
    retried: int = 0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def summary(self) -> str:
        return (f"{len(self.answers)}/{self.requests} answered by {self.clients} clients in {self.seconds:.1f} s "
                f"({len(self.answers) / self.seconds:.0f} requests/s); latency p50 {self.percentile_ms(50):.1f} ms, "
                f"p99 {self.percentile_ms(99):.1f} ms; {self.retried} retried, {len(self.failures)} failed")


def run_load(url: str, payloads: list[list], clients: int = 16, requests: int = 2000, timeout_s: float = 60.0,
             midway=None, route: str = "/predict", body=lambda inputs: {"inputs": inputs}) -> LoadReport:
    """Request i POSTs body(payloads[i % len(payloads)]) to url + route (defaults: `electra serve`'s; a benchmark
    points them at another server) and expects {"predictions": [one per input]}. `midway`, if given, is called
    once, on its own thread, when half of the requests have been sent (to inject a failure while the load runs)."""
    report = LoadReport(requests=requests, clients=clients)
    lock, next_index = threading.Lock(), iter(range(requests))
    halfway = threading.Event()
    side = threading.Thread(target=lambda: (halfway.wait(), midway()), daemon=True) if midway else None

    def client() -> None:
        session = http.Session()
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            if index == requests // 2:
                halfway.set()
            inputs = payloads[index % len(payloads)]
            started = time.perf_counter()
            outcome, retried = _post(session, url + route, body(inputs), len(inputs), timeout_s)
            elapsed = time.perf_counter() - started
            with lock:
                report.retried += retried
                if isinstance(outcome, list):
                    report.answers[index] = outcome
                    report.latencies.append(elapsed)
                else:
                    report.failures[index] = outcome

    if side:
        side.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - started
    if side:
        halfway.set()
        side.join(timeout=timeout_s)
    return report


def _post(session, url: str, body: dict, expected: int, timeout_s: float) -> tuple[list | str, int]:
    """(predictions, or what went wrong; 1 if the request was retried)."""
    retried = 0
    while True:
        try:
            response = session.post(url, json=body, timeout=timeout_s)
        except http.ConnectionError as error:
            if not retried:
                retried = 1
                continue
            return f"{type(error).__name__}: {error}", retried
        if response.status_code == 503 and not retried:
            retried = 1
            continue
        if response.status_code != 200:
            return f"{response.status_code}: {response.text[:200]}", retried
        predictions = response.json().get("predictions")
        if not isinstance(predictions, list) or len(predictions) != expected:
            return f"200 with {len(predictions or [])} predictions for {expected} inputs", retried
        return predictions, retried
