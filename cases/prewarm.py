"""Compiling ahead of a fuzz stream.

A fuzz stream runs its draws one after another, and on a GPU with an empty Triton cache each
draw of a new kernel variant waits for its compile (0.2-5 s). The draws are predictable: for a
given hypothesis seed the generate phase yields the same cases whatever the test does with them
(until a failure starts the shrink phase). So helper case runners (child processes like the
stream's own) run the draws the stream will reach next, as ordinary cases whose results are
dropped; their compiled variants land in Triton's on-disk cache, where the stream finds them.

Used only where it pays: compiled kernels (not the CPU interpreter) and one stream per process
host-wide (under pytest-xdist the workers already compile in parallel).
"""
from __future__ import annotations

import threading
from typing import Callable, Iterable

from cases.case import Case
from cases.isolation import IsolatedRunner


class Prewarmer:
    """Runs predicted draws in ``helpers`` case runners, in draw order, skipping draws the stream
    has already reached. ``predict(batch)`` returns the draws of hypothesis run ``batch``; the
    first ``ahead`` batches are predicted at once, then one more each time the stream starts a
    batch. Never raises into the stream: a helper that fails or crashes just stops."""

    def __init__(self, specs: list[str], device: str, adapter, predict: Callable[[int], Iterable[Case]], *,
                 helpers: int, timeout: float | None, worker_id: str | None = None, ahead: int = 2):
        self.adapter, self.predict, self.ahead = adapter, predict, ahead
        self.ran = 0  # predicted draws the helpers ran
        self.hits = 0  # draws of the stream that were predicted
        self._cases: list[Case] = []
        self._index: dict[str, int] = {}
        self._next = 0  # the next predicted draw a helper takes
        self._reached = 0  # the stream has run every predicted draw before this one
        self._predicted_batches = 0
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)
        self._stopped = False
        self._runners = [IsolatedRunner(specs, device, timeout=timeout, worker_id=worker_id) for _ in range(helpers)]
        for runner in self._runners:
            runner.prestart()
        self._extend(ahead)
        self._threads = [threading.Thread(target=self._work, args=(r,), daemon=True, name=f"qkcheck-prewarm-{i}")
                         for i, r in enumerate(self._runners)]
        for t in self._threads:
            t.start()

    def _extend(self, batches: int) -> None:
        new = []
        for _ in range(batches):
            new += list(self.predict(self._predicted_batches))
            self._predicted_batches += 1
        with self._more:
            for case in new:
                if case.id not in self._index:
                    self._index[case.id] = len(self._cases)
                    self._cases.append(case)
            self._more.notify_all()

    def batch_started(self, batch: int) -> None:
        """The stream starts hypothesis run ``batch``: keep ``ahead`` batches predicted past it."""
        if not self._stopped and batch + self.ahead > self._predicted_batches:
            self._extend(batch + self.ahead - self._predicted_batches)

    def reached(self, case: Case) -> None:
        """The stream is running draw ``case``: helpers skip it and every predicted draw before it."""
        i = self._index.get(case.id)
        if i is not None:
            self.hits += 1
            with self._lock:
                self._reached = max(self._reached, i + 1)

    def _take(self) -> Case | None:
        with self._more:
            while not self._stopped:
                i = max(self._next, self._reached)
                if i < len(self._cases):
                    self._next = i + 1
                    return self._cases[i]
                self._more.wait()
            return None

    def _work(self, runner: IsolatedRunner) -> None:
        try:
            while (case := self._take()) is not None:
                runner.run(case, self.adapter, diagnose_failures=False)
                self.ran += 1
        except Exception:  # a helper that cannot go on (closed, crashed, failed to start) just stops
            pass
        finally:
            runner.close()

    def close(self) -> None:
        """Stop the helpers now (their children are killed; a case they were running is dropped)."""
        with self._more:
            self._stopped = True
            self._more.notify_all()
        for runner in self._runners:
            runner.close()
