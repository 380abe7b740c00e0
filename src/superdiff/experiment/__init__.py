"""Helpers for experiment scripts: a job scheduler that runs trainings and samplings
side by side, and a timer for its jobs."""

from ._jobs import Job as Job, run_jobs as run_jobs, timed as timed
