"""The stream reader threads: reused from one stream to the next, bounded, and gone
when idle."""

from __future__ import annotations

import threading
import time

from fusefs.data.receivers import Receivers


def wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.005)


def test_a_finished_thread_runs_the_next_job_instead_of_a_new_one():
    pool = Receivers(keep=4, name="test-recv")
    ran: list[str] = []
    for i in range(20):
        done = threading.Event()
        pool.run(lambda i=i, done=done: (ran.append(threading.current_thread().name), done.set()))
        done.wait(5)
        wait(lambda: pool.waiting == 1)
    assert pool.started == 1 and len(set(ran)) == 1 and len(ran) == 20


def test_at_most_keep_threads_wait_and_idle_ones_exit():
    pool = Receivers(keep=2, idle_timeout=0.2, name="test-idle")
    release = threading.Event()
    for _ in range(5):  # five at once: five threads
        pool.run(lambda: release.wait(5))
    assert pool.started == 5
    release.set()
    wait(lambda: pool.waiting == 2)
    time.sleep(0.1)
    assert pool.waiting == 2  # the other three exited
    wait(lambda: pool.waiting == 0)  # and these after their idle timeout
    alive = [t for t in threading.enumerate() if t.name.startswith("test-idle")]
    wait(lambda: not any(t.is_alive() for t in alive))
