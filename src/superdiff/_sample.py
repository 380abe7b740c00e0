"""Samplers: thin functions that build the terms and call `diffrax.diffeqsolve`."""

from collections.abc import Sequence

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._family import AbstractScoreFamily, ScoreFn, check_family, score_family
from ._operators import AbstractOperator, And, Single
from ._sde import AbstractSDE
from ._terms import (
    AbstractDensityEstimator,
    ItoEstimator,
    MixedScore,
    SuperpositionState,
    SuperpositionTerm,
    ode_settings,
    ode_solve_kwargs,
    probability_flow_term,
    reverse_sde_terms,
)


Models = AbstractScoreFamily | ScoreFn | Sequence[ScoreFn]


class Samples(eqx.Module):
    """What a sampler returns.

    - `x`: the samples at `t_min`, `(n, *d)`.
    - `log_q`: each model's tracked $\\log q^i_{t_{min}}(x)$, `(n, M)`, or `None`
        when the density was not tracked.
    """

    x: Float[Array, "n *d"]
    log_q: Float[Array, "n M"] | None = None


def _initial_state(
    sde: AbstractSDE,
    key: PRNGKeyArray,
    x_init: Array | None,
    num_samples: int | None,
    shape: tuple[int, ...] | None,
    t_max: float,
) -> tuple[Array, PRNGKeyArray]:
    init_key, key = jax.random.split(key)
    if x_init is not None:
        x_init = jnp.asarray(x_init)
        if x_init.ndim < 2:
            raise ValueError(
                f"`x_init` must be a batch of shape (n, *d); got shape {x_init.shape}."
            )
        return x_init, key
    if num_samples is None or shape is None:
        raise ValueError(
            "Give either `x_init` (a batch of noise) or both `num_samples` and "
            "`shape` (the shape of one example)."
        )
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be positive; got {num_samples}.")
    std = sde.sigma(t_max) if t_max != sde.t_max else sde.prior_std()
    x = std * jax.random.normal(init_key, (num_samples, *shape))
    return x, key


def _check_steps(num_steps: int) -> None:
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"`num_steps` must be a positive integer; got {num_steps!r}.")


@eqx.filter_jit
def _finite_per_model(family: AbstractScoreFamily, t: Array, x: Array) -> Array:
    scores = family.batched(t, x)
    return jnp.all(jnp.isfinite(scores.reshape(*scores.shape[:2], -1)), axis=(0, 2))


def _check_finite_scores(family: AbstractScoreFamily, t: float, x: Array) -> None:
    """One compiled evaluation on a few starting points, before the long solve, so
    that a model returning NaN is named (not just a NaN result after the solve)."""
    finite = _finite_per_model(family, jnp.asarray(t), x[:8])
    bad = [int(i) for i in jnp.flatnonzero(~finite)]
    if bad:
        raise FloatingPointError(
            f"Score model(s) {bad} returned NaN or inf at t={t} on the initial noise; "
            "expected finite scores."
        )


def _check_finite_result(samples: Samples) -> None:
    parts = [samples.x] + ([] if samples.log_q is None else [samples.log_q])
    if not all(bool(jnp.all(jnp.isfinite(p))) for p in parts):
        raise FloatingPointError(
            "Sampling produced NaN or inf: a score model returned non-finite values "
            "along the way, or the step size is too large for the schedule."
        )


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
    solver: dfx.AbstractSolver | None = None,
    track_density: bool | None = None,
    estimator: AbstractDensityEstimator | None = None,
    log_q_init: Float[Array, "n M"] | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
) -> Samples:
    """Sample the reverse SDE of one model or of M superposed models.

    **Arguments:**

    - `models`: one score `(t, x) -> ∇log q_t(x)` on one example, a sequence of
        them, or an `AbstractScoreFamily`. Equinox modules of one architecture are
        stacked on a model axis (`StackedScores`).
    - `sde`: the schedule the models were trained under.
    - `operator`: how the scores are weighted (`Single`, `Average`, `Or`, `And`);
        `Single()` by default.
    - `key`: the random key (keyword-only).
    - `num_samples`, `shape`: how many examples of which shape to draw from the
        prior; or `x_init`, a batch of starting noise at `t_max`.
    - `num_steps`: uniform steps in $t$ from `t_max` to `t_min`.
    - `solver`: any Diffrax SDE solver when the density is not tracked (the noise
        is additive, so all converge to the same law); `diffrax.Euler()` when it
        is (the default).
    - `track_density`: track each model's $\\log q^i$ along the path (always on for
        operators that need it, such as `Or` and `And`).
    - `estimator`: `ItoEstimator()` (default; Skreta et al. Eq. 90) or
        `KernelRatioEstimator()` (Eq. 89, more accurate at equal steps).
    - `log_q_init`: $\\log q^i_{t_{max}}(x_{init})$, `(n, M)`; by default the
        prior's log-density, which all models share.
    - `t_min`, `t_max`: the time range, within the schedule's.

    **Returns:** a `Samples` with the samples and, if tracked, the log-densities.
    """
    operator = Single() if operator is None else operator
    if not isinstance(operator, AbstractOperator):
        raise TypeError(
            "`operator` must be a superdiff operator (Single, Average, Or, And or a "
            f"subclass of AbstractOperator); got {type(operator).__name__}."
        )
    family = score_family(models)
    operator.check(family.num_models)
    t_min, t_max = sde.time_range(t_min, t_max)
    _check_steps(num_steps)
    x, key = _initial_state(sde, key, x_init, num_samples, shape, t_max)
    check_family(family, t_max, x[0])
    track = operator.needs_density if track_density is None else track_density
    if operator.needs_density and not track:
        raise ValueError(
            f"`{type(operator).__name__}` weighs the models by their log-densities, "
            "so it needs `track_density=True`."
        )
    solver = dfx.Euler() if solver is None else solver
    if isinstance(solver, dfx.ItoMilstein | dfx.StratonovichMilstein):
        raise ValueError(
            f"`{type(solver).__name__}` forms the diffusion's Jacobian over the whole "
            "batch, (n·d)² entries, which does not fit in memory for a batch of "
            "samples; and the reverse SDE's noise is additive, so Milstein's "
            "correction is zero anyway. Use `diffrax.Euler()`, `diffrax.Heun()` or "
            "an SRK solver such as `diffrax.ShARK()`."
        )
    if track:
        _check_tracking_solver(solver)
        estimator = ItoEstimator() if estimator is None else estimator
        if (
            isinstance(operator, And)
            and operator.curvature_correction
            and not isinstance(estimator, ItoEstimator)
        ):
            raise ValueError(
                "`And(curvature_correction=True)` corrects the Itô estimator's "
                "increments, so it needs `estimator=ItoEstimator()`; got "
                f"`{type(estimator).__name__}`."
            )
        if log_q_init is None:
            log_q_init = jnp.broadcast_to(
                jax.vmap(sde.prior_log_prob)(x)[:, None],
                (x.shape[0], family.num_models),
            )
        log_q_init = jnp.asarray(log_q_init, dtype=x.dtype)
        if log_q_init.shape != (x.shape[0], family.num_models):
            raise ValueError(
                f"`log_q_init` must have shape (n, M) = "
                f"({x.shape[0]}, {family.num_models}); got {log_q_init.shape}."
            )
    elif estimator is not None or log_q_init is not None:
        raise ValueError(
            "`estimator` and `log_q_init` only apply with `track_density=True`."
        )
    _check_finite_scores(family, t_max, x)
    if track:
        assert estimator is not None and log_q_init is not None
        out = _solve_tracked(
            family, sde, operator, estimator, solver, x, log_q_init, key,
            num_steps, t_min, t_max,
        )  # fmt: skip
    else:
        out = _solve_plain(
            family, sde, operator, solver, x, key, num_steps, t_min, t_max
        )
    _check_finite_result(out)
    return out


def _check_tracking_solver(solver: dfx.AbstractSolver) -> None:
    if not isinstance(solver, dfx.Euler):
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


def _solve_kwargs(num_steps: int, t_min: float, t_max: float) -> dict:
    return dict(
        t0=0.0,
        t1=t_max - t_min,
        dt0=(t_max - t_min) / num_steps,
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=dfx.ConstantStepSize(),
        adjoint=dfx.ForwardMode(),
        max_steps=num_steps + 1,
    )


@eqx.filter_jit
def _solve_tracked(
    family, sde, operator, estimator, solver, x, log_q, key, num_steps, t_min, t_max
) -> Samples:
    term = SuperpositionTerm(
        sde, family, operator, _brownian(x, key), estimator=estimator, t_max=t_max
    )
    sol = dfx.diffeqsolve(
        term,
        solver,
        y0=SuperpositionState(x, log_q),
        **_solve_kwargs(num_steps, t_min, t_max),
    )
    assert sol.ys is not None
    return Samples(sol.ys.x[-1], sol.ys.log_q[-1])


def _mixed_score(family: AbstractScoreFamily, operator: AbstractOperator) -> MixedScore:
    # Operators that ignore the densities give state-independent weights.
    num = family.num_models
    kappa = operator(jnp.zeros(num), jnp.zeros((num, 1)), jnp.zeros(1), 0.0)
    return MixedScore(family, kappa)


@eqx.filter_jit
def _solve_plain(
    family, sde, operator, solver, x, key, num_steps, t_min, t_max
) -> Samples:
    if isinstance(operator, Single):
        score = family.member(operator.index)  # skip the other models' networks
    else:
        score = _mixed_score(family, operator)
    terms = reverse_sde_terms(sde, score, _brownian(x, key, solver), t_max=t_max)
    sol = dfx.diffeqsolve(terms, solver, y0=x, **_solve_kwargs(num_steps, t_min, t_max))
    assert sol.ys is not None
    return Samples(sol.ys[-1])


def sample_ode(
    score: ScoreFn,
    sde: AbstractSDE,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "n *d"] | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> Float[Array, "n *d"]:
    """Sample with the probability-flow ODE (Song et al. 2021, Eq. 13).

    Any Diffrax ODE solver: with `num_steps` fixed steps, or adaptive with a
    `stepsize_controller` (e.g. `diffrax.PIDController(rtol=1e-5, atol=1e-5)` with
    `diffrax.Tsit5()`, the default pair).
    """
    t_min, t_max, solver, stepsize_controller = ode_settings(
        sde, t_min, t_max, solver, num_steps, stepsize_controller
    )
    if x_init is None:
        if key is None:
            raise ValueError("Give `key` to draw the initial noise, or `x_init`.")
        x, _ = _initial_state(sde, key, None, num_samples, shape, t_max)
    else:
        x, _ = _initial_state(sde, jax.random.key(0), x_init, None, None, t_max)
    check_family(score_family(score), t_max, x[0])
    out = _solve_ode(
        score, sde, solver, stepsize_controller, x, num_steps, t_min, t_max, max_steps
    )
    _check_finite_result(Samples(out))
    return out


@eqx.filter_jit
def _solve_ode(score, sde, solver, controller, x, num_steps, t_min, t_max, max_steps):
    term = probability_flow_term(sde, score, t_max=t_max)
    sol = dfx.diffeqsolve(
        term,
        solver,
        y0=x,
        **ode_solve_kwargs(0.0, t_max - t_min, num_steps, controller, max_steps),
    )
    assert sol.ys is not None
    return sol.ys[-1]
