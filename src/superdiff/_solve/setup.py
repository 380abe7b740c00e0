"""The one setup every sampler starts from.

Every public sampler, SDE and ODE alike, takes the same keywords for what samplers
share (`SolveOptions`) and calls `setup` once: it checks the options, places the
steps, picks the solver, splits the key (the only place that does), takes or draws
the starting batch (the only place that draws it) and checks the models on it. What
is left to the sampler is its own term and state.
"""

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, cast

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._density import AbstractDivergence
from .._model import AbstractScoreFamily
from .._schedule import AbstractSDE
from .._util import branched_error_if, error_if
from .steps import Steps, positive_int, steps


class StepOptions(TypedDict, total=False):
    """The keywords of the solve itself (see `SolveOptions`)."""

    num_steps: int | None
    spacing: str | None
    stepsize_controller: dfx.AbstractStepSizeController | None
    solver: dfx.AbstractSolver | None
    t_min: Float[ArrayLike, ""] | None
    t_max: Float[ArrayLike, ""] | None
    max_steps: int
    throw: bool


class LikelihoodOptions(StepOptions, total=False):
    """The keywords of the likelihood functions, whose start is the data: the
    `StepOptions` and `key` (for Hutchinson probes)."""

    key: PRNGKeyArray | None


class NoiseOptions(LikelihoodOptions, total=False):
    """The keywords of samplers that take their starting noise `x_init` as an
    argument: the `SolveOptions` but `x_init`."""

    num_samples: int | None
    shape: Sequence[int] | None


class SolveOptions(NoiseOptions, total=False):
    """The keywords every sampler takes for what samplers share; all optional.

    - `key`: the random key, split once (`split_key`): the first half draws the
        starting noise, the second drives the sampler's own randomness (Brownian
        motion, Hutchinson probes).
    - `num_samples`, `shape`: how many examples of which shape to draw from
        $\\mathcal N(0, \\sigma_{t_{max}}^2 I)$; or
    - `x_init`: a batch of starting points `(n, *d)` at `t_max` (at `t_min` for
        `log_prob_ode`, whose start is the data).
    - `num_steps`: fixed steps. Without it an ODE sampler steps adaptively; the
        SDE sampler `sample` takes 1000.
    - `spacing`: where fixed steps go: `"t"` (uniform in $t$, the default of every
        sampler) or `"log_snr"` (uniform in the log-SNR $\\lambda_t$).
    - `stepsize_controller`: a Diffrax step-size controller; by default
        `PIDController(rtol=1e-5, atol=1e-5)` when `num_steps` is not given. With
        both, `num_steps` sets only the first step.
    - `solver`: a Diffrax solver: `diffrax.Tsit5()` for the ODE samplers,
        `diffrax.Euler()` for the SDE ones, by default.
    - `t_min`, `t_max`: the time range, within the schedule's (its own by
        default); either may be traced.
    - `max_steps`: the most steps an adaptive solve may take (16 384).
    - `throw`: raise if the solve fails (NaN or inf, out of steps), at run time and
        under `jax.jit`; with `False` the failure is the result's `result` code.
    """

    x_init: Float[ArrayLike, "n *d"] | None


def check_options(options: Mapping[str, Any], allowed: type = SolveOptions) -> None:
    """Refuse keywords that the TypedDict `allowed` does not name (a typo would
    otherwise be ignored)."""
    names = allowed.__required_keys__ | allowed.__optional_keys__  # pyright: ignore
    if unknown := sorted(set(options) - names):
        raise TypeError(
            f"Unexpected keyword argument(s) {unknown}; expected some of "
            f"{sorted(names)}."
        )


class Setup(eqx.Module):
    """A sampler's checked start: the time range, the starting batch `x`, the key
    for the sampler's own randomness (`None` when no key was given), the solver,
    the steps and `throw`."""

    t_min: float | Array
    t_max: float | Array
    x: Float[Array, "n *d"]
    key: PRNGKeyArray | None
    solver: dfx.AbstractSolver
    steps: Steps
    throw: bool = eqx.field(static=True)

    def need_key(self, why: str) -> PRNGKeyArray:
        """The sampler's key, or an error saying what needs one."""
        if self.key is None:
            raise ValueError(f"{why}: give `key=jax.random.key(seed)`.")
        return self.key


def setup(
    sde: AbstractSDE,
    options: Mapping[str, Any],
    *,
    models: AbstractScoreFamily | None,
    default_solver: dfx.AbstractSolver,
    ode: bool,
    default_num_steps: int | None = None,
    switch: Float[ArrayLike, ""] | None = None,
    to_noise: bool = False,
    start_name: str = "x_init",
) -> Setup:
    """Everything a sampler does before its term: check the `SolveOptions` in
    `options` (the keys a sampler passes on), place the steps (`steps`), pick and
    check the solver (`ode`: it must solve one ODE term), split the key, take or
    draw the starting batch, and check `models` on it: by shape, and for finite
    scores at the start time ($t_{min}$ when integrating from data to noise,
    `to_noise`). `switch` is a time the steps must land on; `start_name` what the
    sampler calls its starting batch."""
    check_options(options)
    options = cast(SolveOptions, options)
    t_min, t_max = sde.time_range(options.get("t_min"), options.get("t_max"))
    num_steps = options.get("num_steps", default_num_steps)
    grid = steps(
        sde,
        t_min,
        t_max,
        num_steps=num_steps,
        stepsize_controller=options.get("stepsize_controller"),
        spacing=options.get("spacing"),
        max_steps=options.get("max_steps", 16_384),
        switch=switch,
        to_noise=to_noise,
    )
    solver = options.get("solver")
    solver = default_solver if solver is None else solver
    _check_solver(solver, ode)
    key = options.get("key")
    noise_key = own_key = None
    if key is not None:
        noise_key, own_key = split_key(check_key(key))
    x = start(
        sde,
        t_max,
        key=noise_key,
        num_samples=options.get("num_samples"),
        shape=options.get("shape"),
        x_init=options.get("x_init"),
        name=start_name,
    )
    if models is not None:
        t_start = t_min if to_noise else t_max
        models.check(t_start, x[0])
        x = check_finite_scores(models, t_start, x)
    throw = options.get("throw", True)
    if not isinstance(throw, bool):
        raise TypeError(f"`throw` must be True or False; got {throw!r}.")
    return Setup(t_min, t_max, x, own_key, solver, grid, throw)


def _check_solver(solver, ode: bool) -> None:
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            "`solver` must be a Diffrax solver such as `diffrax.Tsit5()` or "
            f"`diffrax.Euler()`; got {type(solver).__name__}."
        )
    if isinstance(solver, dfx.AbstractImplicitSolver):
        raise ValueError(
            f"`{type(solver).__name__}` is implicit: it would solve one nonlinear "
            "system over the whole batch (n·d unknowns, every example coupled to "
            "every other through the root find and its step-size control), which "
            "is slow beyond use for a batch of samples. The reverse-time dynamics "
            "are not stiff on the schedule's range: use an explicit solver "
            "(diffrax.Tsit5(), Heun(), Euler())."
        )
    if ode and solver.term_structure is not dfx.AbstractTerm:
        raise ValueError(
            "This sampler solves one ODE term, so `solver` must be an ODE solver "
            f"(Tsit5, Dopri5, Heun, Euler, ...); got `{type(solver).__name__}`, "
            f"which expects terms of the structure {solver.term_structure}."
        )


# ------------------------------------------------------------- start state


def check_key(key) -> PRNGKeyArray:
    """`key` if it is a JAX random key; else a clear error."""
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


def split_key(key: PRNGKeyArray) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(noise key, sampler key)`: the one split of a sampler's key. The first half
    draws the starting noise, the second the sampler's own randomness; a sampler
    with two uses of its own (noise and probes, dequantisation and probes) splits
    the same way."""
    noise_key, own_key = jax.random.split(key)
    return noise_key, own_key


def draw_noise(
    sde: AbstractSDE,
    t_max: Float[ArrayLike, ""],
    shape: tuple[int, ...],
    key: PRNGKeyArray,
) -> Float[Array, "n *d"]:
    """The starting noise, from the noise half of the key: the one place it is
    drawn ($\\mathcal N(0, \\sigma_{t_{max}}^2 I)$, `AbstractSDE.prior_sample`)."""
    return sde.prior_sample(shape, key=key, t_max=t_max)


def _error_if_not_finite(x: Array, name: str) -> Array:
    bad = ~jnp.all(jnp.isfinite(x))
    return error_if(x, bad, f"`{name}` contains NaN or inf; expected finite values.")


def start(
    sde: AbstractSDE,
    t_max: float | Array,
    *,
    key: PRNGKeyArray | None,
    num_samples: int | None,
    shape: Sequence[int] | None,
    x_init: ArrayLike | None,
    name: str = "x_init",
) -> Float[Array, "n *d"]:
    """The starting batch: `x_init` as given (checked: a non-empty batch, finite),
    or `num_samples` draws of shape `shape` with `key` (the noise half). `name` is
    what the caller calls `x_init`."""
    if x_init is not None:
        if num_samples is not None or shape is not None:
            raise ValueError(
                f"Give either `{name}` (a batch of starting points) or `num_samples` "
                "and `shape`, not both."
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
            f"Give either `{name}` (a batch of starting points) or both "
            "`num_samples` and `shape` (the shape of one example)."
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
    if key is None:
        raise ValueError("Drawing the starting noise: give `key=jax.random.key(seed)`.")
    return draw_noise(sde, t_max, (num_samples, *(int(s) for s in shape)), key)


def fixed_probes(
    divergence: AbstractDivergence | None, shape: tuple[int, ...], setup: Setup
) -> Array | None:
    """The divergence's probes for a batch of `shape`, drawn once per solve with
    the sampler's key (which must then be given); `None` for divergences that
    draw none."""
    if divergence is None or divergence.probe_shape(shape) is None:
        return None
    key = setup.need_key(f"`{type(divergence).__name__}` draws random probes")
    return divergence.probes(shape, key=key)


def initial_log_q(
    sde: AbstractSDE,
    t_max: float | Array,
    x: Float[Array, "n *d"],
    log_q_init: ArrayLike | None,
    num_models: int,
) -> Float[Array, "n M"]:
    """Each model's $\\log q^i_{t_{max}}$ at the starting batch: `log_q_init`
    (checked: shape `(n, M)`, finite), or the starting noise's own density, which
    all models share."""
    n = x.shape[0]
    if log_q_init is None:
        log_q = jax.vmap(lambda xi: sde.prior_log_prob(xi, t_max))(x)
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
    family: AbstractScoreFamily, t: Float[ArrayLike, ""], x: Float[Array, "n *d"]
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
        f"Score model(s) {bad} returned NaN or inf on the starting points; "
        "expected finite scores."
        for bad in bad_sets
    ]
    return branched_error_if(x, ~jnp.all(finite), bits, messages)
