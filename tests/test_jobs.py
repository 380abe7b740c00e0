"""The job scheduler of the experiments, `superdiff.experiment.run_jobs`, which
trains and samples side by side."""

import threading
import time

import pytest

from superdiff.experiment import Job, run_jobs


def test_run_jobs_runs_side_by_side_and_fails_fast():
    positions = []

    def job(name):
        def run(position):
            positions.append(position)
            return 2 * name

        return run

    jobs = {name: job(name) for name in "abc"}
    assert run_jobs(jobs, 1) == {"a": "aa", "b": "bb", "c": "cc"}
    assert positions == [None] * 3
    positions.clear()
    assert list(run_jobs(jobs, 2).items()) == [("a", "aa"), ("b", "bb"), ("c", "cc")]
    assert sorted(positions)[0] == 0 and set(positions) <= {0, 1}

    # Two jobs run at once: each waits at a barrier for the other.
    barrier = threading.Barrier(2, timeout=10)
    meet = lambda position: barrier.wait() in (0, 1)
    assert run_jobs({"x": meet, "y": meet}, 2) == {"x": True, "y": True}

    # A failure is raised as itself at once, not after the jobs still running.
    release = threading.Event()

    def fail(position):
        raise ValueError("boom")

    tic = time.perf_counter()
    with pytest.raises(ValueError, match="boom"):
        run_jobs({"hold": lambda position: release.wait(10), "fail": fail}, 2)
    assert time.perf_counter() - tic < 5
    release.set()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_run_jobs_starts_a_job_once_its_needs_are_done(workers):
    events: list[str] = []
    lock = threading.Lock()

    def make(name, value):
        def run(*needed, position):
            with lock:
                events.append(f"start {name}")
            time.sleep(0.05 if name in ("a", "c") else 0.0)
            with lock:
                events.append(f"end {name}")
            return value + sum(needed)

        return run

    jobs = {
        "a": Job(make("a", 1)),
        "b": Job(make("b", 10)),
        "c": Job(make("c", 100), needs=("a",)),
        "d": Job(make("d", 1000), needs=("c", "b")),
        "e": Job(make("e", 10_000)),
    }
    results = run_jobs(jobs, workers)
    assert results == {"a": 1, "b": 10, "c": 101, "d": 1111, "e": 10_000}
    assert list(results) == list(jobs)
    for name, job in jobs.items():
        for need in job.needs:
            assert events.index(f"end {need}") < events.index(f"start {name}")


def test_run_jobs_fills_a_free_worker_with_a_later_ready_job():
    # "held" blocks until "free" has run; "waits" needs "held", so a scheduler that
    # took jobs strictly in order would leave the second worker idle and hang.
    ran = threading.Event()
    jobs = {
        "held": Job(lambda position: ran.wait(10)),
        "waits": Job(lambda held, position: held, needs=("held",)),
        "free": Job(lambda position: ran.set()),
    }
    tic = time.perf_counter()
    assert run_jobs(jobs, 2) == {"held": True, "waits": True, "free": None}
    assert time.perf_counter() - tic < 5


def test_run_jobs_rejects_a_need_that_is_not_an_earlier_job():
    jobs = {"a": Job(lambda b, position: b, needs=("b",)), "b": lambda position: 1}
    with pytest.raises(ValueError, match=r"Job 'a' needs \['b'\], which are not jobs"):
        run_jobs(jobs, 2)
