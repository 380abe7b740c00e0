"""The one integration every sampler calls (`diffrax.diffeqsolve`), with failure
codes reported the Diffrax way."""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .results import RESULTS
from .steps import Steps


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
