"""Helpers for experiment scripts: the command line they share (flag types, presets,
the entry point), progress bars that suit a terminal or a log, sample grids, and a job scheduler
that runs trainings and samplings side by side, with a timer for its jobs."""

from .._progress import progress_bar as progress_bar
from ._cli import (
    ExperimentParser as ExperimentParser,
    UsageError as UsageError,
    existing_dir as existing_dir,
    load_data as load_data,
    non_negative_int as non_negative_int,
    output_dir as output_dir,
    positive_float as positive_float,
    positive_int as positive_int,
    probability as probability,
    run as run,
)
from ._figures import (
    plot_training_grids as plot_training_grids,
    save_grid as save_grid,
    tile as tile,
)
from ._jobs import Job as Job, run_jobs as run_jobs, timed as timed
