"""Where a solve steps: fixed steps on a grid uniform in $t$ or in log-SNR, or
adaptive. Every number may be traced (`t_min`, `t_max`, a switch time): only the
number of steps is static."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._schedule import AbstractSDE


SPACINGS = ("t", "log_snr")


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


def _check_spacing(spacing) -> str:
    if spacing not in SPACINGS:
        raise ValueError(f"`spacing` must be 't' or 'log_snr'; got {spacing!r}.")
    return spacing


def time_grid(
    sde: AbstractSDE,
    num_steps: int,
    *,
    spacing: str = "t",
    t_min: Float[ArrayLike, ""] | None = None,
    t_max: Float[ArrayLike, ""] | None = None,
) -> Float[Array, " num_steps+1"]:
    """Step boundaries in reverse time $\\tau$, from 0 to $t_{max} - t_{min}$, for
    `diffrax.StepTo`.

    - `spacing="t"`: uniform in $t$ (every sampler's default).
    - `spacing="log_snr"`: uniform in the log-SNR $\\lambda_t$ (Kingma & Gao 2023),
        the clock of Karczewski et al.'s samplers; the times come from
        `AbstractSDE.time_at_log_snr`.

    `t_min` and `t_max` may be traced; `num_steps` is static.
    """
    t_min, t_max = sde.time_range(t_min, t_max)
    num_steps = positive_int(num_steps, "num_steps")
    if _check_spacing(spacing) == "t":
        ts = jnp.linspace(t_max, t_min, num_steps + 1)
    else:
        lams = jnp.linspace(sde.log_snr(t_max), sde.log_snr(t_min), num_steps + 1)
        ts = sde.time_at_log_snr(lams).astype(jnp.result_type(t_min, t_max))
        ts = ts.at[0].set(t_max).at[-1].set(t_min)
    return jnp.asarray(t_max - ts)


class Steps(eqx.Module):
    """Where a solve steps: Diffrax's `dt0`, step-size controller and `max_steps`,
    and the interval `[t0, t1]` in $\\tau$ (`t0 > t1` for solves from data to
    noise)."""

    t0: float | Array
    t1: float | Array
    dt0: float | Array | None
    controller: dfx.AbstractStepSizeController
    max_steps: int = eqx.field(static=True)


def _onto(grid: Array, point: Array) -> Array:
    """`grid` with its interior boundary nearest to `point` moved onto it (when
    `point` lies strictly inside): the grid keeps its size, so a traced `point`
    needs no recompilation, and stays strictly increasing."""
    interior = grid[1:-1]
    k = 1 + jnp.argmin(jnp.abs(interior - point))
    inside = (point > grid[0]) & (point < grid[-1])
    return grid.at[k].set(jnp.where(inside, point, grid[k]))


def steps(
    sde: AbstractSDE,
    t_min: float | Array,
    t_max: float | Array,
    *,
    num_steps: int | None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    spacing: str | None = None,
    max_steps: int = 16_384,
    switch: Float[ArrayLike, ""] | None = None,
    to_noise: bool = False,
) -> Steps:
    """The steps of a solve over `[t_min, t_max]` (already checked), from the
    samplers' common arguments.

    - `num_steps` alone: fixed steps, uniform in $t$ (`diffrax.ConstantStepSize`)
        unless `spacing="log_snr"`; the same default for every sampler.
    - neither `num_steps` nor a controller: adaptive, `PIDController(rtol=1e-5,
        atol=1e-5)`, at most `max_steps`.
    - `stepsize_controller`: the user's; `num_steps` then sets only the first step.
    - `switch`: a time $t$ that must be a step boundary (where a guidance rule
        jumps): the fixed grid's nearest interior boundary moves onto it (so it
        keeps `num_steps` steps; at least 2), an adaptive controller steps onto it.
    - `to_noise`: integrate from data to noise ($\\tau$ from $t_{max} - t_{min}$ to
        0; fine for ODE solvers).
    """
    span = t_max - t_min
    zero = 0.0 * span  # a Python float for Python times, an array for arrays
    t0, t1 = (span, zero) if to_noise else (zero, span)
    if num_steps is not None:
        num_steps = positive_int(num_steps, "num_steps")
    max_steps = positive_int(max_steps, "max_steps")
    if spacing is not None:
        _check_spacing(spacing)
    fixed = num_steps is not None and stepsize_controller is None
    if spacing is not None and not fixed:
        raise ValueError(
            "`spacing` places fixed steps: it needs `num_steps` and no "
            "`stepsize_controller`."
        )
    jump = None if switch is None else jnp.asarray(t_max - jnp.asarray(switch))
    if fixed:
        assert num_steps is not None
        spacing = spacing or "t"
        if spacing == "t" and jump is None:
            return Steps(
                t0, t1, (t1 - t0) / num_steps, dfx.ConstantStepSize(), num_steps + 1
            )
        grid = time_grid(sde, num_steps, spacing=spacing, t_min=t_min, t_max=t_max)
        if jump is not None:
            if num_steps < 2:
                raise ValueError(
                    "A switch time needs a step boundary inside the interval: give "
                    f"`num_steps` of at least 2; got {num_steps}."
                )
            grid = _onto(grid, jump)
        if to_noise:
            grid = grid[::-1]
        return Steps(t0, t1, None, dfx.StepTo(ts=grid), num_steps)
    controller = (
        dfx.PIDController(rtol=1e-5, atol=1e-5)
        if stepsize_controller is None
        else stepsize_controller
    )
    dt0 = None if num_steps is None else (t1 - t0) / num_steps
    if isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
        if jump is not None:
            # A jump at either end is no jump: keep it strictly inside.
            inside = jnp.clip(jump, 0.0, span)
            controller = dfx.ClipStepSizeController(controller, jump_ts=inside[None])
    elif num_steps is None:
        raise ValueError(
            f"`{type(controller).__name__}` takes steps of a fixed size: give "
            "`num_steps` too."
        )
    else:
        max_steps = num_steps + 1
    return Steps(t0, t1, dt0, controller, max_steps)
