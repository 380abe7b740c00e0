"""The public samplers, each one composition: setup, term and state, the solve."""

from .alignment import (
    score_alignment as score_alignment,
)
from .guided import (
    GuidedOptions as GuidedOptions,
    prior_guidance as prior_guidance,
    sample_density_guided as sample_density_guided,
    sample_high_density as sample_high_density,
    sample_prior_guided as sample_prior_guided,
)
from .likelihood import (
    bits_per_dim as bits_per_dim,
    bits_per_dim_offset as bits_per_dim_offset,
    dequantize as dequantize,
    log_prob_ode as log_prob_ode,
    sample_ode_with_density as sample_ode_with_density,
)
from .ode import (
    sample_ode as sample_ode,
)
from .sde import (
    sample as sample,
)
from .sharded import (
    sample_sharded as sample_sharded,
    sharded_noise as sharded_noise,
)
