"""Sampling the reverse SDE of one model or of M superposed models."""

from collections.abc import Sequence
from typing_extensions import Unpack

import diffrax as dfx
from jaxtyping import Array, Float, PRNGKeyArray

from .._density import AbstractDensityEstimator
from .._model import AbstractScoreFamily, ScoreFn, score_family
from .._operator import AbstractOperator, Single
from .._schedule import AbstractSDE
from .._solve import Samples, SolveOptions, initial_log_q, integrate, setup
from .._term import SuperpositionTerm, reverse_sde_terms


Models = AbstractScoreFamily | ScoreFn | Sequence[ScoreFn]


def sample(
    models: Models,
    sde: AbstractSDE,
    operator: AbstractOperator | None = None,
    *,
    track_density: bool | None = None,
    estimator: AbstractDensityEstimator | None = None,
    log_q_init: Float[Array, "n M"] | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
    """Sample the reverse SDE of one model or of M superposed models (Skreta et al.
    2025, Algorithm 1; `docs/math.md` §2, §3, §5).

    **Arguments:**

    - `models`: one score `(t, x) -> ∇log q_t(x)` on one example, a sequence of
        them, or an `AbstractScoreFamily`. Equinox modules of one architecture are
        stacked on a model axis (`StackedScores`).
    - `sde`: the schedule the models were trained under.
    - `operator`: how the scores are weighted (`Single`, `Average`, `Or`, `And`, or
        any `AbstractOperator`); `Single()` by default.
    - `track_density`: track each model's $\\log q^i$ along the path (always on for
        operators that need it, such as `Or` and `And`).
    - `estimator`: `KernelRatioEstimator()` (Skreta et al. Eq. 89 with a curvature
        correction; the default, the most accurate) or `ItoEstimator()` (Eq. 90);
        the operator may ask for another (`AbstractOperator.default_estimator`).
    - `log_q_init`: $\\log q^i_{t_{max}}(x_{init})$, `(n, M)`; by default the
        starting noise's own log-density, which all models share.
    - the `SolveOptions` every sampler shares: `key` (needed: it drives the
        Brownian motion), `num_samples` and `shape` or `x_init`, `num_steps` (1000
        by default), `spacing` (uniform in $t$ by default), `solver`, `t_min`,
        `t_max`, `throw`. `solver` is any Diffrax SDE solver when the density is
        not tracked (the noise is additive, so all converge to the same law);
        `diffrax.Euler()` when it is (the default).

    **Returns:** `Samples`: the samples and, if tracked, the log-densities `(n, M)`.
    """
    operator = Single() if operator is None else operator
    if not isinstance(operator, AbstractOperator):
        raise TypeError(
            "`operator` must be a superdiff operator (Single, Average, Or, And or a "
            f"subclass of AbstractOperator); got {type(operator).__name__}."
        )
    family = score_family(models)
    track = operator.needs_density if track_density is None else track_density
    if operator.needs_density and not track:
        raise ValueError(
            f"`{type(operator).__name__}` weighs the models by their log-densities, "
            "so it needs `track_density=True`."
        )
    if track:
        estimator = operator.default_estimator() if estimator is None else estimator
    elif estimator is not None or log_q_init is not None:
        raise ValueError(
            "`estimator` and `log_q_init` only apply with `track_density=True`."
        )
    operator.check(family.num_models, estimator)
    if "stepsize_controller" in options:
        raise ValueError(
            "`sample` takes fixed steps (`num_steps`): its Brownian motion is drawn "
            "step by step, which an adaptive controller cannot revisit."
        )
    start = setup(
        sde, options, models=family, default_solver=dfx.Euler(), ode=False,
        default_num_steps=1000,
    )  # fmt: skip
    _check_sde_solver(start.solver, track)
    key = start.need_key("Sampling the reverse SDE draws Brownian motion")
    x = start.x
    if track:
        assert estimator is not None
        log_q = initial_log_q(sde, start.t_max, x, log_q_init, family.num_models)
        term = SuperpositionTerm(
            sde, family, operator, _brownian(x, key), estimator, start.t_max
        )
        y1, result = integrate(
            term, start.solver, term.init(x, log_q), start.steps,
            adjoint=dfx.ForwardMode(), throw=start.throw,
        )  # fmt: skip
        return Samples(y1.x, term.finish(start.steps.t1, y1), result=result)
    brownian = _brownian(x, key, start.solver)
    terms = reverse_sde_terms(sde, operator.mixed_score(family), brownian, start.t_max)
    x1, result = integrate(
        terms, start.solver, x, start.steps, adjoint=dfx.ForwardMode(),
        throw=start.throw,
    )  # fmt: skip
    return Samples(x1, result=result)


def _check_sde_solver(solver: dfx.AbstractSolver, track: bool) -> None:
    if isinstance(solver, dfx.ItoMilstein | dfx.StratonovichMilstein):
        raise ValueError(
            f"`{type(solver).__name__}` forms the diffusion's Jacobian over the whole "
            "batch, (n·d)² entries, which does not fit in memory for a batch of "
            "samples; and the reverse SDE's noise is additive, so Milstein's "
            "correction is zero anyway. Use `diffrax.Euler()`, `diffrax.Heun()` or "
            "an SRK solver such as `diffrax.ShARK()`."
        )
    if track and not isinstance(solver, dfx.Euler):
        limit = (
            "converges to the Stratonovich solution, which differs from the Itô one "
            "by ½∫g²∇·s dτ (order d nats)"
            if isinstance(solver, dfx.AbstractStratonovichSolver)
            else "does not take one Euler step with the whole (dτ, dW) control"
        )
        raise ValueError(
            "Tracking log-densities along the SDE (needed by Or/And, or asked for "
            "with track_density=True) is supported with `diffrax.Euler()` only: the "
            "Itô estimator and the AND weights are functions of the realised "
            f"Euler–Maruyama step. Got `{type(solver).__name__}`, which {limit}. "
            "Use `diffrax.Euler()`, with `KernelRatioEstimator()` for more accuracy "
            "per step; other solvers work with track_density=False."
        )


def _brownian(
    x: Array, key: PRNGKeyArray, solver: dfx.AbstractSolver | None = None
) -> dfx.UnsafeBrownianPath:
    # Stochastic Runge–Kutta solvers (SRA1, ShARK, SEA, ...) need Lévy area, not just
    # increments: generate the cheapest kind that the solver accepts.
    needed = getattr(solver, "minimal_levy_area", dfx.AbstractBrownianIncrement)
    levy_area = next(
        levy
        for levy in (
            dfx.BrownianIncrement,
            dfx.SpaceTimeLevyArea,
            dfx.SpaceTimeTimeLevyArea,
        )
        if issubclass(levy, needed)
    )
    return dfx.UnsafeBrownianPath(shape=x.shape, key=key, levy_area=levy_area)
