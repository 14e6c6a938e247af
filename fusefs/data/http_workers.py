"""The threads that fetch ranged HTTP answers, shared by every HTTP source of a data client.

A range is fetched by one blocking request on one warm connection (`http_conn`),
its body read straight into the buffer a reader will hand to FUSE; a thread per
range in flight is what lets the kernel do the copying while Python waits, and the
GIL is free while it does. At most `size` ranges are in flight over HTTP at once,
from all files together: that bounds connections and buffers alike.

Ranges a reader waits on (`Job.demand`) go before read-ahead, so a random read is
not queued behind another file's prefetch. A job that asks to be tried again later
(a retry after a backoff) waits in a timed queue, without holding a thread. A thread
that found nothing to do for `idle_timeout` seconds exits; threads are started as
jobs arrive and none is waiting. Threads are daemons: a process exits without
waiting for a transfer to end.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Protocol

log = logging.getLogger(__name__)


class Job(Protocol):
    @property
    def demand(self) -> bool:
        """A reader waits on this job now."""
        ...

    def step(self) -> float | None:
        """One attempt: None when the job is finished (done, failed or cancelled), else
        the seconds to wait before the next attempt."""
        ...


class RangeWorkers:
    def __init__(self, size: int, idle_timeout: float = 60.0, name: str = "http-range"):
        if size < 1:
            raise ValueError("at least one worker")
        self.size = size
        self.idle_timeout = idle_timeout
        self.name = name
        self.started = 0  # threads started so far
        self._cond = threading.Condition(threading.Lock())
        self._demand: deque[Job] = deque()
        self._ahead: deque[Job] = deque()
        self._later: list[tuple[float, int, Job]] = []
        self._order = itertools.count()
        self._threads = 0
        self._waiting = 0
        self._closed = False

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def queued(self) -> int:
        return len(self._demand) + len(self._ahead) + len(self._later)

    def submit(self, job: Job, delay: float = 0.0) -> None:
        with self._cond:
            if self._closed:
                return
            if delay > 0:
                heapq.heappush(self._later, (time.monotonic() + delay, next(self._order), job))
            else:
                (self._demand if job.demand else self._ahead).append(job)
            if self._waiting:
                self._waiting -= 1  # that thread is this job's: the next job needs another
                self._cond.notify()
                return
            if self._threads >= self.size:
                return
            self._threads += 1
            self.started += 1
            number = self.started
        threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True).start()

    def close(self) -> None:
        """Stop taking jobs; threads exit once their current attempt ends."""
        with self._cond:
            self._closed = True
            self._demand.clear()
            self._ahead.clear()
            self._later.clear()
            self._waiting = 0
            self._cond.notify_all()

    def _next(self) -> Job | None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    job = heapq.heappop(self._later)[2]
                    (self._demand if job.demand else self._ahead).append(job)
                if self._demand:
                    return self._demand.popleft()
                if self._ahead:
                    return self._ahead.popleft()
                timeout = self._later[0][0] - now if self._later else self.idle_timeout
                self._waiting += 1
                woken = self._cond.wait(timeout)
                if not woken:
                    self._waiting -= 1  # a notify takes its waiter off the count itself
                if not woken and not self._later and not self._demand and not self._ahead:
                    break  # idle for idle_timeout: let the thread go
            self._threads -= 1
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                delay = job.step()
            except Exception:  # a bug in a job must not take its thread (and the pool) away
                log.exception("%s: range job failed", self.name)
                continue
            if delay is not None:
                self.submit(job, delay)
