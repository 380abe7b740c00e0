"""Sampling the probability-flow ODE."""

from typing_extensions import Unpack

import diffrax as dfx

from .._model import ScoreFn, score_family
from .._schedule import AbstractSDE
from .._solve import Samples, SolveOptions, integrate, setup
from .._term import FlowState, ProbabilityFlow


def sample_ode(
    score: ScoreFn, sde: AbstractSDE, **options: Unpack[SolveOptions]
) -> Samples:
    """Sample with the probability-flow ODE (Song et al. 2021, Eq. 13;
    `docs/math.md` (2.1) with $\\xi = 0$).

    **Arguments:** the model and its schedule, and the `SolveOptions` every sampler
    shares: `key` with `num_samples` and `shape` (draws from $\\mathcal N(0,
    \\sigma_{t_{max}}^2 I)$), or `x_init`, a batch of noise at `t_max`; any Diffrax
    ODE solver, with `num_steps` fixed steps or adaptive with a
    `stepsize_controller` (by default `diffrax.Tsit5()` with
    `PIDController(rtol=1e-5, atol=1e-5)`).

    **Returns:** `Samples` with the samples.
    """
    start = setup(
        sde, options, models=score_family(score), default_solver=dfx.Tsit5(), ode=True
    )
    term = dfx.ODETerm(ProbabilityFlow(sde, score, start.t_max))
    y1, result = integrate(
        term, start.solver, FlowState(start.x), start.steps, throw=start.throw
    )
    return Samples(y1.x, result=result)
