"""The threads that read bidi streams, kept from one stream to the next.

A stream generation needs a thread for as long as it runs: it opens the gRPC call
and reads its responses (`BidiStream._receive`). Starting a thread blocks the caller
until the thread runs, which on a busy machine costs the FUSE loop a millisecond or
more per open; so a finished reader thread waits for the next generation instead of
exiting. At most `keep` threads wait (the data client keeps as many as it may have
streams open); a thread left waiting `idle_timeout` seconds exits. Threads are
daemons: a process exits without waiting for a stream to end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_Job = Callable[[], object]


class Receivers:
    def __init__(self, keep: int, idle_timeout: float = 60.0, name: str = "bidi-recv"):
        self.keep = keep
        self.idle_timeout = idle_timeout
        self.name = name
        self.started = 0  # threads started so far
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job]] = []  # the inbox of each waiting thread

    def run(self, job: _Job) -> None:
        """Run `job` on a waiting thread, or on a new one when none waits."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self.started += 1
                number = self.started
        if inbox is not None:
            inbox.put(job)
            return
        threading.Thread(
            target=self._work, args=(job,), daemon=True, name=f"{self.name}-{number}"
        ).start()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._idle)

    def _work(self, job: _Job) -> None:
        inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        while True:
            try:
                job()
            except Exception:  # a bug in one stream must not take the thread's next ones
                log.exception("stream reader failed")
            with self._lock:
                if len(self._idle) >= self.keep:
                    return
                self._idle.append(inbox)
            try:
                job = inbox.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                job = inbox.get()  # taken by `run` just now: its job is on the way
