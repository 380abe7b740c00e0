"""A small job scheduler for experiments: trainings and samplings run side by side
in threads, each starting once the jobs it needs have finished."""

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Job:
    """A unit of work for `run_jobs`: `fn(*results, position=line)`, where `results`
    are those of the jobs named in `needs`, in that order."""

    fn: Callable[..., Any]
    needs: tuple[str, ...] = ()


def run_jobs(
    given: Mapping[str, Job | Callable[..., Any]], workers: int
) -> dict[str, Any]:
    """Run jobs, at most `workers` at a time, each in a thread of its own; returns
    their results by name, in the order given. A plain callable is a job that needs
    nothing. A job may need only jobs listed before it, and starts once they have
    finished: whenever a worker is free it takes the first job in the order given
    whose needs are met. A job is called with `position`, the terminal line of its
    progress bar (`None` when they run one at a time). The first job to fail is
    raised at once, as itself; the others are left to the caller's exit.

    XLA:CPU runs each convolution on one core, so on a CPU two jobs side by side
    use both cores: on this project's 2-core machine two UNet trainings in two
    threads took 0.77-0.82 of the time of one after the other, and two samplings
    0.64-0.74 (`benchmarks/unet.py`). On an accelerator use one worker."""
    jobs = {n: j if isinstance(j, Job) else Job(j) for n, j in given.items()}
    names = list(jobs)
    for i, (name, job) in enumerate(jobs.items()):
        if unknown := [n for n in job.needs if n not in names[:i]]:
            raise ValueError(
                f"Job {name!r} needs {unknown}, which are not jobs listed before it; "
                f"a job may only need earlier ones. The jobs, in order: {names}."
            )
    results: dict[str, Any] = {}
    if workers == 1:
        for name, job in jobs.items():
            results[name] = job.fn(*(results[n] for n in job.needs), position=None)
        return results
    # The first pending job's needs are all earlier jobs, finished or running, so
    # some job is always running or ready: no deadlock.
    pending, lines = list(names), list(range(workers))
    running: dict[concurrent.futures.Future, tuple[str, int]] = {}
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        while pending or running:
            ready = [n for n in pending if all(d in results for d in jobs[n].needs)]
            for name in ready[: workers - len(running)]:
                pending.remove(name)
                line, needed = lines.pop(0), (results[n] for n in jobs[name].needs)
                future = pool.submit(jobs[name].fn, *needed, position=line)
                running[future] = (name, line)
            done, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                name, line = running.pop(future)
                lines = sorted([*lines, line])
                results[name] = future.result()  # a failure is raised here
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return {name: results[name] for name in names}


def timed(fn, name: str, spans: dict, tic: float):
    """`fn`, recording into `spans[name]` when it started and ended (seconds since
    `tic`)."""

    def run(*args, position=None):
        start = time.perf_counter() - tic
        result = fn(*args, position=position)
        spans[name] = (round(start, 1), round(time.perf_counter() - tic, 1))
        return result

    return run
