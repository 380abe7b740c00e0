"""What every sampler returns, and the result codes of a solve."""

import diffrax as dfx
import equinox as eqx
from jaxtyping import Array, Float


class RESULTS(dfx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Diffrax's result codes, and superdiff's own."""

    non_finite = (
        "The solve produced NaN or inf: a score model returned non-finite values "
        "along the way, or the step size is too large for the schedule."
    )
    guidance_out_of_reach = (
        "The adaptive solver ran out of steps on the guided flow: the requested "
        "log-density is out of reach for some samples, so the drift needed grows "
        "without bound near a mode (the correction scales like 1/|s|). Ask for a "
        "quantile nearer 0.5 or a smaller rate, start from the median norm "
        "(`x_init=prior_guidance(sde, noise, 0.5)`), or use fixed steps "
        "(`num_steps`)."
    )


class Samples(eqx.Module):
    """What every sampler returns.

    - `x`: where the solve ended, `(n, *d)`: the samples at $t_{min}$; for
        `log_prob_ode`, the latents at $t_{max}$.
    - `log_q`: each model's $\\log q^i$, `(n, M)` (M = 1 for one model), or `None`
        when no density was computed: of the samples for the samplers; of the input
        data for `log_prob_ode` and `bits_per_dim` (whose `x` are the latents).
    - `extras`: whatever else the sampler computed, by name (for example `"bpd"`
        for `bits_per_dim`, `"alignment"` for `score_alignment`).
    - `result`: a `RESULTS` code; `RESULTS.successful` unless the sampler was called
        with `throw=False` and failed.
    """

    x: Float[Array, "n *d"]
    log_q: Float[Array, "n M"] | None = None
    extras: dict[str, Array] = eqx.field(default_factory=dict)
    result: RESULTS = eqx.field(default_factory=lambda: RESULTS.successful)
