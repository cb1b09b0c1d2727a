"""`rayjobs.background_priority.lower` on a real process of two threads (no Ray): what a run's private Ray
processes get (tests/test_train_own_ray.py checks them on a real run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rayjobs import background_priority

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread niceness: Linux /proc")

TWO_THREADS = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); print('up', flush=True); time.sleep(60)"


def thread_nices(pid: int) -> list[int]:
    return sorted(os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def two_threads():
    proc = subprocess.Popen([sys.executable, "-c", TWO_THREADS], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{proc.pid}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_every_thread_goes_to_nice_19_once(two_threads):
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the child inherits this test's niceness
    threads = len(os.listdir(f"/proc/{two_threads}/task"))
    assert threads == 2 and thread_nices(two_threads) == [base, base]
    assert background_priority.lower(two_threads) == (threads if base < 19 else 0)
    assert thread_nices(two_threads) == [19, 19]
    assert background_priority.lower(two_threads) == 0  # nothing left to change


def test_a_process_already_nicer_is_left_where_it_is(two_threads):
    background_priority.lower(two_threads, nice=15)
    assert background_priority.lower(two_threads, nice=10) == 0  # never raises a priority
    assert thread_nices(two_threads) == [15, 15]


def test_a_process_that_is_gone_changes_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert background_priority.lower(proc.pid) == 0


def test_without_a_ray_of_its_own_there_is_nothing_to_lower(monkeypatch):
    import ray._private.worker as ray_worker

    monkeypatch.setattr(ray_worker, "_global_node", None)  # this process started no Ray (or attached to one)
    assert background_priority.background_processes(training=set()) == []
