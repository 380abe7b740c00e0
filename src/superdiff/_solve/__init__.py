"""The one setup and the one integration under every sampler, and their result."""

from .integrate import integrate as integrate
from .results import RESULTS as RESULTS, Samples as Samples
from .setup import (
    LikelihoodOptions as LikelihoodOptions,
    NoiseOptions as NoiseOptions,
    Setup as Setup,
    SolveOptions as SolveOptions,
    StepOptions as StepOptions,
    check_finite_scores as check_finite_scores,
    check_key as check_key,
    check_options as check_options,
    draw_noise as draw_noise,
    fixed_probes as fixed_probes,
    initial_log_q as initial_log_q,
    setup as setup,
    split_key as split_key,
)
from .steps import (
    Steps as Steps,
    positive_int as positive_int,
    steps as steps,
    time_grid as time_grid,
)
