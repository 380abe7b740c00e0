"""Samplers of the reverse SDE and the probability-flow ODE. Each reads like the
algorithm it implements: build the family, pick the operator, build the term and the
initial state, call the one solve (`_solve.integrate`), return `Samples`."""

from collections.abc import Sequence
from typing_extensions import Unpack

import diffrax as dfx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from ._estimators import AbstractDensityEstimator
from ._family import AbstractScoreFamily, ScoreFn, check_family, score_family
from ._operators import AbstractOperator, Single
from ._sde import AbstractSDE
from ._solve import (
    Samples,
    SolveOptions,
    check_finite_scores,
    check_key,
    initial_log_q,
    initial_noise,
    integrate,
    ode_start,
    steps,
)
from ._terms import (
    FlowState,
    ProbabilityFlow,
    SuperpositionTerm,
    reverse_sde_terms,
)


Models = AbstractScoreFamily | ScoreFn | Sequence[ScoreFn]


def sample(
    models: Models,
    sde: AbstractSDE,
    operator: AbstractOperator | None = None,
    *,
    key: PRNGKeyArray,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "n *d"] | None = None,
    num_steps: int = 1000,
    spacing: str | None = None,
    solver: dfx.AbstractSolver | None = None,
    track_density: bool | None = None,
    estimator: AbstractDensityEstimator | None = None,
    log_q_init: Float[Array, "n M"] | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    throw: bool = True,
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
    - `key`: the random key (keyword-only).
    - `num_samples`, `shape`: how many examples of which shape to draw from
        $\\mathcal N(0, \\sigma_{t_{max}}^2 I)$; or `x_init`, a batch of starting
        noise at `t_max`.
    - `num_steps`: the number of steps from `t_max` to `t_min`.
    - `spacing`: where the steps go: `"t"` (uniform in $t$) or `"log_snr"`
        (uniform in the log-SNR). By default `"log_snr"` when the densities are
        tracked, where it makes the tracked $\\log q$ several times more accurate
        at equal steps (`docs/density.md`), and `"t"` otherwise.
    - `solver`: any Diffrax SDE solver when the density is not tracked (the noise
        is additive, so all converge to the same law); `diffrax.Euler()` when it
        is (the default).
    - `track_density`: track each model's $\\log q^i$ along the path (always on for
        operators that need it, such as `Or` and `And`).
    - `estimator`: `KernelRatioEstimator()` (Skreta et al. Eq. 89 with a curvature
        correction; the default, the most accurate) or `ItoEstimator()` (Eq. 90);
        the operator may ask for another (`AbstractOperator.default_estimator`).
    - `log_q_init`: $\\log q^i_{t_{max}}(x_{init})$, `(n, M)`; by default the
        starting noise's own log-density, which all models share.
    - `t_min`, `t_max`: the time range, within the schedule's.
    - `throw`: raise if the solve fails (NaN or inf); with `False` the failure is
        in the result's `result` code instead.

    **Returns:** `Samples`: the samples and, if tracked, the log-densities `(n, M)`.
    """
    operator = Single() if operator is None else operator
    if not isinstance(operator, AbstractOperator):
        raise TypeError(
            "`operator` must be a superdiff operator (Single, Average, Or, And or a "
            f"subclass of AbstractOperator); got {type(operator).__name__}."
        )
    family = score_family(models)
    t_min, t_max = sde.time_range(t_min, t_max)
    key = check_key(key, "Sampling the reverse SDE")
    x = initial_noise(
        sde, t_max, key=key, num_samples=num_samples, shape=shape, x_init=x_init
    )
    _, key = jax.random.split(key)  # the first half drew x
    check_family(family, t_max, x[0])
    track = operator.needs_density if track_density is None else track_density
    if operator.needs_density and not track:
        raise ValueError(
            f"`{type(operator).__name__}` weighs the models by their log-densities, "
            "so it needs `track_density=True`."
        )
    grid = steps(
        sde,
        t_min,
        t_max,
        num_steps=num_steps,
        spacing=spacing,
        default_spacing="log_snr" if track else "t",
    )
    solver = dfx.Euler() if solver is None else solver
    _check_sde_solver(solver, track)
    if track:
        estimator = operator.default_estimator() if estimator is None else estimator
    elif estimator is not None or log_q_init is not None:
        raise ValueError(
            "`estimator` and `log_q_init` only apply with `track_density=True`."
        )
    operator.check(family.num_models, estimator)
    x = check_finite_scores(family, t_max, x)
    if track:
        assert estimator is not None
        log_q = initial_log_q(sde, t_max, x, log_q_init, family.num_models)
        term = SuperpositionTerm(
            sde, family, operator, _brownian(x, key), estimator=estimator, t_max=t_max
        )
        y1, result = integrate(
            term, solver, term.init(x, log_q), grid, adjoint=dfx.ForwardMode(),
            throw=throw,
        )  # fmt: skip
        return Samples(y1.x, term.finish(grid.t1, y1), result=result)
    brownian = _brownian(x, key, solver)
    terms = reverse_sde_terms(sde, operator.mixed_score(family), brownian, t_max)
    x1, result = integrate(
        terms, solver, x, grid, adjoint=dfx.ForwardMode(), throw=throw
    )
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


def sample_ode(
    score: ScoreFn,
    sde: AbstractSDE,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "n *d"] | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
    """Sample with the probability-flow ODE (Song et al. 2021, Eq. 13;
    `docs/math.md` (2.1) with $\\xi = 0$).

    **Arguments:** the model and its schedule; `key` with `num_samples` and `shape`
    (draws from $\\mathcal N(0, \\sigma_{t_{max}}^2 I)$), or `x_init`, a batch of
    noise at `t_max`; and the `SolveOptions`: any Diffrax ODE solver, with
    `num_steps` fixed steps or adaptive with a `stepsize_controller` (by default
    `diffrax.Tsit5()` with `PIDController(rtol=1e-5, atol=1e-5)`).

    **Returns:** `Samples` with the samples.
    """
    setup, x = ode_start(
        score, sde, options, x_init=x_init, key=key, num_samples=num_samples,
        shape=shape,
    )  # fmt: skip
    term = dfx.ODETerm(ProbabilityFlow(sde, score, setup.t_max))
    y1, result = integrate(
        term, setup.solver, FlowState(x), setup.steps, throw=setup.throw
    )
    return Samples(y1.x, result=result)
