"""The one integration every sampler calls, and the one result every sampler returns.

A sampler builds its Diffrax terms and initial state, then calls `integrate`: the
single place where the solver runs, the steps are placed (`Steps`: fixed, on a grid,
or adaptive), the end point is saved and failures are reported. Failures are reported
the Diffrax way: a `RESULTS` code in the returned `Samples`, raised as an error at
run time when `throw=True` (the default), so that every sampler works under
`jax.jit` and `jax.vmap`.

Everything is integrated in reverse time $\\tau = t_{max} - t$, forward from noise
($\\tau = 0$) to data ($\\tau = t_{max} - t_{min}$): Diffrax's SDE solvers behave
with $t_0 < t_1$ (`docs/math.md`, preamble).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypedDict, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._divergence import AbstractDivergence
from ._family import AbstractScoreFamily, ScoreFn, check_family, score_family
from ._sde import AbstractSDE
from ._util import branched_error_if, error_if


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


# ------------------------------------------------------------------ steps


def positive_int(value, name: str) -> int:
    """`value` as an `int`, if it is a concrete positive integer (Python, NumPy or a
    0-d integer array); else a `ValueError` naming `name`."""
    ok = not isinstance(value, bool | np.bool_)
    if ok:
        try:
            array = np.asarray(value)
        except jax.errors.ConcretizationTypeError:
            raise ValueError(
                f"`{name}` must be a concrete integer (static under `jax.jit`); got a "
                "traced value."
            ) from None
        ok = array.ndim == 0 and np.issubdtype(array.dtype, np.integer) and array >= 1
    if not ok:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def time_grid(
    sde: AbstractSDE,
    num_steps: int,
    *,
    spacing: str = "t",
    t_min: float | None = None,
    t_max: float | None = None,
) -> np.ndarray:
    """Step boundaries in reverse time $\\tau$, from 0 to $t_{max} - t_{min}$, for
    `diffrax.StepTo`.

    - `spacing="t"`: uniform in $t$ (what `num_steps` gives elsewhere).
    - `spacing="log_snr"`: uniform in the log-SNR $\\lambda_t$ (Kingma & Gao 2023),
        the clock of Karczewski et al.'s samplers; the times come from
        `AbstractSDE.time_at_log_snr`.
    """
    t_min, t_max = sde.time_range(t_min, t_max)
    num_steps = positive_int(num_steps, "num_steps")
    if spacing == "t":
        ts = np.linspace(t_max, t_min, num_steps + 1)
    elif spacing == "log_snr":
        # Configuration, computed now even under `jax.jit`.
        with jax.ensure_compile_time_eval():
            lams = np.linspace(
                float(sde.log_snr(t_max)), float(sde.log_snr(t_min)), num_steps + 1
            )
            ts = np.array(sde.time_at_log_snr(lams), dtype=np.float64)
        ts[0], ts[-1] = t_max, t_min
    else:
        raise ValueError(f"`spacing` must be 't' or 'log_snr'; got {spacing!r}.")
    return t_max - ts


class Steps(eqx.Module):
    """Where a solve steps: Diffrax's `dt0`, step-size controller and `max_steps`,
    and the interval `[t0, t1]` in $\\tau$ (`t0 > t1` for solves from data to
    noise)."""

    t0: float
    t1: float
    dt0: float | None
    controller: dfx.AbstractStepSizeController
    max_steps: int = eqx.field(static=True)


def steps(
    sde: AbstractSDE,
    t_min: float,
    t_max: float,
    *,
    num_steps: int | None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    spacing: str | None = None,
    default_spacing: str = "t",
    max_steps: int = 16_384,
    jump_tau: float | None = None,
    to_noise: bool = False,
) -> Steps:
    """The steps of a solve over `[t_min, t_max]` (already checked), from the
    samplers' common arguments.

    - `num_steps` alone: fixed steps, uniform in $t$ (`diffrax.ConstantStepSize`),
        or on `time_grid(spacing)` when `spacing` (or `default_spacing`) is
        `"log_snr"` or a `jump_tau` must be a step boundary.
    - neither `num_steps` nor a controller: adaptive, `PIDController(rtol=1e-5,
        atol=1e-5)`, at most `max_steps`.
    - `stepsize_controller`: the user's; `num_steps` then sets only the first step.
        An adaptive controller steps exactly onto `jump_tau`.
    - `to_noise`: integrate from data to noise ($\\tau$ from $t_{max} - t_{min}$ to
        0; fine for ODE solvers).
    """
    span = t_max - t_min
    t0, t1 = (span, 0.0) if to_noise else (0.0, span)
    if num_steps is not None:
        num_steps = positive_int(num_steps, "num_steps")
    max_steps = positive_int(max_steps, "max_steps")
    if spacing not in (None, "t", "log_snr"):
        raise ValueError(f"`spacing` must be 't' or 'log_snr'; got {spacing!r}.")
    fixed = num_steps is not None and stepsize_controller is None
    if spacing is not None and not fixed:
        raise ValueError(
            "`spacing` places fixed steps: it needs `num_steps` and no "
            "`stepsize_controller`."
        )
    jumps = [] if jump_tau is None or not 0.0 < jump_tau < span else [jump_tau]
    if fixed:
        assert num_steps is not None
        spacing = spacing or default_spacing
        if spacing == "t" and not jumps:
            return Steps(
                t0, t1, (t1 - t0) / num_steps, dfx.ConstantStepSize(), num_steps + 1
            )
        grid = time_grid(sde, num_steps, spacing=spacing, t_min=t_min, t_max=t_max)
        grid = np.union1d(grid, jumps)
        if to_noise:
            grid = grid[::-1]
        ts = jnp.asarray(grid)
        return Steps(t0, t1, None, dfx.StepTo(ts=ts), len(grid) - 1)
    controller = (
        dfx.PIDController(rtol=1e-5, atol=1e-5)
        if stepsize_controller is None
        else stepsize_controller
    )
    dt0 = None if num_steps is None else (t1 - t0) / num_steps
    if isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
        if jumps:
            controller = dfx.ClipStepSizeController(controller, jump_ts=jumps)
    elif num_steps is None:
        raise ValueError(
            f"`{type(controller).__name__}` takes steps of a fixed size: give "
            "`num_steps` too."
        )
    else:
        max_steps = num_steps + 1
    return Steps(t0, t1, dt0, controller, max_steps)


class SolveOptions(TypedDict, total=False):
    """The keywords every probability-flow sampler (`sample_ode`, `log_prob_ode`,
    `sample_ode_with_density`, `bits_per_dim`, `score_alignment`, the guided
    samplers) takes for its solve; all optional.

    - `solver`: any Diffrax ODE solver; `diffrax.Tsit5()` by default.
    - `num_steps`: fixed steps, uniform in $t$ (or as the sampler's `spacing`
        says). Without it the solve is adaptive.
    - `stepsize_controller`: a Diffrax step-size controller; by default
        `PIDController(rtol=1e-5, atol=1e-5)` when `num_steps` is not given. With
        both, `num_steps` sets only the first step.
    - `t_min`, `t_max`: the time range, within the schedule's (its own by default).
    - `max_steps`: the most steps an adaptive solve may take (16 384).
    - `throw`: raise if the solve fails (NaN or inf, out of steps), at run time and
        under `jax.jit`; with `False` the failure is the result's `result` code.
    """

    solver: dfx.AbstractSolver | None
    num_steps: int | None
    stepsize_controller: dfx.AbstractStepSizeController | None
    t_min: float | None
    t_max: float | None
    max_steps: int
    throw: bool


def check_options(options: Mapping[str, Any], allowed: type) -> None:
    """Refuse keywords that the TypedDict `allowed` does not name (a typo would
    otherwise be ignored)."""
    names = allowed.__required_keys__ | allowed.__optional_keys__  # pyright: ignore
    if unknown := sorted(set(options) - names):
        raise TypeError(
            f"Unexpected keyword argument(s) {unknown}; expected some of "
            f"{sorted(names)}."
        )


class Setup(NamedTuple):
    """A probability-flow solve's checked settings."""

    t_min: float
    t_max: float
    solver: dfx.AbstractSolver
    steps: Steps
    throw: bool


def ode_setup(
    sde: AbstractSDE,
    options: Mapping[str, Any],
    *,
    spacing: str | None = None,
    default_spacing: str = "t",
    t_switch: float | None = None,
    to_noise: bool = False,
) -> Setup:
    """The time range, solver, steps and `throw` of a probability-flow solve from
    the `SolveOptions` a sampler was given (see `steps` for the rest); other keys
    of `options` are the sampler's own."""
    options = cast(SolveOptions, options)
    t_min, t_max = sde.time_range(options.get("t_min"), options.get("t_max"))
    grid = steps(
        sde,
        t_min,
        t_max,
        num_steps=options.get("num_steps"),
        stepsize_controller=options.get("stepsize_controller"),
        spacing=spacing,
        default_spacing=default_spacing,
        max_steps=options.get("max_steps", 16_384),
        jump_tau=None if t_switch is None else t_max - t_switch,
        to_noise=to_noise,
    )
    solver = options.get("solver")
    solver = dfx.Tsit5() if solver is None else solver
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            f"`solver` must be a Diffrax solver such as `diffrax.Tsit5()`; got "
            f"{type(solver).__name__}."
        )
    if solver.term_structure is not dfx.AbstractTerm:
        raise ValueError(
            "The probability-flow samplers solve one ODE term, so `solver` must be an "
            f"ODE solver (Tsit5, Dopri5, Heun, Euler, ...); got `{type(solver).__name__}`, "
            f"which expects terms of the structure {solver.term_structure}."
        )
    return Setup(t_min, t_max, solver, grid, options.get("throw", True))


# ------------------------------------------------------------- start state


def check_key(key, why: str) -> PRNGKeyArray:
    """`key` if it is a JAX random key; else a clear error saying what needs it."""
    if key is None:
        raise ValueError(f"{why}: give `key=jax.random.key(seed)`.")
    if not (
        isinstance(key, jax.Array)
        and (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))
        )
    ):
        raise TypeError(
            f"`key` must be a JAX random key such as `jax.random.key(0)`; got {key!r}."
        )
    return key


def fixed_probes(
    divergence: AbstractDivergence | None, shape: tuple[int, ...], key
) -> Array | None:
    """The divergence's probes for a batch of `shape`, drawn once per solve with
    `key` (which must then be given); `None` for divergences that draw none."""
    if divergence is None or divergence.probe_shape(shape) is None:
        return None
    key = check_key(key, f"`{type(divergence).__name__}` draws random probes")
    return divergence.probes(shape, key=key)


def prior_log_prob(
    sde: AbstractSDE, t_max: float, x: Float[Array, "n *d"]
) -> Float[Array, " n"]:
    """$\\log\\mathcal N(x; 0, \\sigma_{t_{max}}^2 I)$ of each example: the density
    the starting noise is drawn from (the prior when `t_max` is the schedule's)."""
    std = sde.sigma(t_max)
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * jnp.sum((flat / std) ** 2, axis=1) - flat.shape[1] * (
        jnp.log(std) + 0.5 * math.log(2 * math.pi)
    )


def _error_if_not_finite(x: Array, name: str) -> Array:
    bad = ~jnp.all(jnp.isfinite(x))
    return error_if(x, bad, f"`{name}` contains NaN or inf; expected finite values.")


def initial_noise(
    sde: AbstractSDE,
    t_max: float,
    *,
    key: PRNGKeyArray | None,
    num_samples: int | None,
    shape: Sequence[int] | None,
    x_init: ArrayLike | None,
    name: str = "x_init",
) -> Float[Array, "n *d"]:
    """The starting batch at `t_max`: `x_init` as given (checked: a batch, finite),
    or `num_samples` draws of shape `shape` from $\\mathcal N(0, \\sigma_{t_{max}}^2
    I)$ with the first half of `jax.random.split(key)` (a sampler that needs more
    randomness takes the second). `name` is what the caller calls `x_init`."""
    if x_init is not None:
        if num_samples is not None or shape is not None:
            raise ValueError(
                f"Give either `{name}` (a batch of noise) or `num_samples` and "
                "`shape`, not both."
            )
        x = jnp.asarray(x_init)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(
                f"`{name}` must be a non-empty batch of shape (n, *d); got shape "
                f"{x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(float)
        return _error_if_not_finite(x, name)
    if num_samples is None or shape is None:
        raise ValueError(
            "Give either `x_init` (a batch of noise) or both `num_samples` and "
            "`shape` (the shape of one example)."
        )
    num_samples = positive_int(num_samples, "num_samples")
    if not (
        isinstance(shape, Sequence)
        and all(isinstance(s, int | np.integer) and s >= 1 for s in shape)
    ):
        raise ValueError(
            "`shape` must be the shape of one example, a tuple of positive integers "
            f"such as (2,) or (28, 28, 1); got {shape!r}."
        )
    init_key, _ = jax.random.split(check_key(key, "Drawing the initial noise"))
    std = sde.sigma(t_max)
    return std * jax.random.normal(init_key, (num_samples, *shape))


def initial_log_q(
    sde: AbstractSDE,
    t_max: float,
    x: Float[Array, "n *d"],
    log_q_init: ArrayLike | None,
    num_models: int,
) -> Float[Array, "n M"]:
    """Each model's $\\log q^i_{t_{max}}$ at the starting batch: `log_q_init`
    (checked: shape `(n, M)`, finite), or the starting noise's own density, which
    all models share."""
    n = x.shape[0]
    if log_q_init is None:
        log_q = prior_log_prob(sde, t_max, x)
        return jnp.broadcast_to(log_q[:, None], (n, num_models))
    log_q = jnp.asarray(log_q_init, dtype=x.dtype)
    if log_q.shape != (n, num_models):
        raise ValueError(
            f"`log_q_init` must have shape (n, M) = ({n}, {num_models}); got "
            f"{log_q.shape}."
        )
    return _error_if_not_finite(log_q, "log_q_init")


@eqx.filter_jit
def check_finite_scores(
    family: AbstractScoreFamily, t: float, x: Float[Array, "n *d"]
) -> Float[Array, "n *d"]:
    """`x`, after one evaluation of every model on its first few examples raises if
    a model returned NaN or inf, naming the model(s): before the long solve, so that
    the model is blamed (not a NaN result after it, or an adaptive solver that runs
    out of steps). Thread the returned `x` on so that the check runs before the
    solve."""
    scores = family.batched(t, x[:8])
    finite = jnp.all(jnp.isfinite(scores.reshape(*scores.shape[:2], -1)), axis=(0, 2))
    num = family.num_models
    if num <= 8:  # one message per set of failing models
        bits = jnp.sum(jnp.where(finite, 0, 2 ** jnp.arange(num)))
        bad_sets = [[i for i in range(num) if code >> i & 1] for code in range(2**num)]
    else:  # the first failing model
        bits = jnp.argmin(finite)
        bad_sets = [[i] for i in range(num)]
    messages = [
        f"Score model(s) {bad} returned NaN or inf at t={t} on the starting points; "
        "expected finite scores."
        for bad in bad_sets
    ]
    return branched_error_if(x, ~jnp.all(finite), bits, messages)


# ------------------------------------------------------------------ solve


def _all_finite(tree: PyTree) -> Array:
    leaves = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@eqx.filter_jit
class _CountNonFinite(dfx.AbstractAdaptiveStepSizeController):
    """An adaptive controller that also counts the steps since a candidate step
    last came out non-finite or made no progress in time (its size below the
    float spacing at `t0`: where the controller it wraps ends up when it shrinks
    the step towards a point where the vector field turns NaN), so that a solve
    that ran out of steps can say whether NaN was the reason."""

    inner: dfx.AbstractAdaptiveStepSizeController
    rtol: Any
    atol: Any
    norm: Callable[[PyTree], Any]

    def __init__(self, inner: dfx.AbstractAdaptiveStepSizeController):
        self.inner = inner
        self.rtol, self.atol, self.norm = inner.rtol, inner.atol, inner.norm

    def wrap(self, direction):
        inner = self.inner.wrap(direction)
        assert isinstance(inner, dfx.AbstractAdaptiveStepSizeController)
        return _CountNonFinite(inner)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        t, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return t, (state, jnp.asarray(2**30, jnp.int32))  # "never"

    def adapt_step_size(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        state, since = controller_state
        keep, next_t0, next_t1, jump, state, result = self.inner.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        bad = ~_all_finite(y1_candidate) | (t1 == t0)
        since = jnp.where(bad, 0, since + 1)
        return keep, next_t0, next_t1, jump, (state, since), result


def integrate(
    terms: PyTree[dfx.AbstractTerm],
    solver: dfx.AbstractSolver,
    y0: PyTree[Array],
    steps: Steps,
    *,
    adjoint: dfx.AbstractAdjoint | None = None,
    throw: bool = True,
    out_of_steps: RESULTS | None = None,
) -> tuple[PyTree[Array], RESULTS]:
    """Solve `terms` from `y0` over `steps` and return the end state and a result
    code: the one integration under every sampler.

    A solve that ends with NaN or inf fails with `RESULTS.non_finite`; one that runs
    out of steps with `out_of_steps` (Diffrax's `max_steps_reached` by default).
    With `throw=True` a failure raises at run time (`eqx.EquinoxRuntimeError`,
    under `jax.jit` and `jax.vmap` too); with `throw=False` the code is returned.
    """
    controller = steps.controller
    adaptive = isinstance(controller, dfx.AbstractAdaptiveStepSizeController)
    if adaptive:
        controller = _CountNonFinite(controller)
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t0=steps.t0,
        t1=steps.t1,
        dt0=steps.dt0,
        y0=y0,
        saveat=dfx.SaveAt(t1=True, controller_state=adaptive),
        stepsize_controller=controller,
        adjoint=dfx.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        max_steps=steps.max_steps,
        throw=False,
    )
    y1 = jax.tree.map(lambda ys: ys[-1], sol.ys)
    result = RESULTS.promote(sol.result)
    ran_out = result == RESULTS.max_steps_reached
    if adaptive:
        # An adaptive solve whose vector field turns NaN partway rejects every
        # step that reaches the bad region and creeps towards it until it runs
        # out of steps: name the cause (NaN in the last tenth of the steps), not
        # the symptom.
        assert sol.controller_state is not None
        _, since = sol.controller_state
        nan = ran_out & (since < max(1, steps.max_steps // 10))
        result = RESULTS.where(nan, RESULTS.non_finite, result)
        ran_out = ran_out & ~nan
    if out_of_steps is not None:
        result = RESULTS.where(ran_out, out_of_steps, result)
    nan = (result == RESULTS.successful) & ~_all_finite(y1)
    result = RESULTS.where(nan, RESULTS.non_finite, result)
    if throw:
        y1 = result.error_if(y1, result != RESULTS.successful)
    return y1, result


def ode_start(
    score: ScoreFn,
    sde: AbstractSDE,
    options: SolveOptions,
    *,
    x_init: ArrayLike | None,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: Sequence[int] | None = None,
    name: str = "x_init",
    to_noise: bool = False,
) -> tuple[Setup, Float[Array, "n *d"]]:
    """What every probability-flow sampler does before its solve: check its
    `SolveOptions`, set the solve up (`ode_setup`), take or draw the starting batch
    (`initial_noise`), and check the model on it, by shape and for finite scores at
    the start time ($t_{min}$ when integrating from data to noise)."""
    check_options(options, SolveOptions)
    setup = ode_setup(sde, options, to_noise=to_noise)
    x = initial_noise(
        sde,
        setup.t_max,
        key=key,
        num_samples=num_samples,
        shape=shape,
        x_init=x_init,
        name=name,
    )
    family = score_family(score)
    t_start = setup.t_min if to_noise else setup.t_max
    check_family(family, t_start, x[0])
    return setup, check_finite_scores(family, t_start, x)
