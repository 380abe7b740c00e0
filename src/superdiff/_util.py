"""Small helpers shared by the modules."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int, PyTree


def inner(a: ArrayLike, b: ArrayLike) -> Array:
    """$\\langle a, b\\rangle$ over all axes of one example."""
    return jnp.sum(jnp.asarray(a) * jnp.asarray(b))


def _through_a_scalar(check: Callable[[Array], Array], x: PyTree) -> PyTree:
    # `eqx.error_if` passes its value through a branch whose failing side is a host
    # callback, and XLA places a callback's result on one device: a batch split over
    # several devices would come back whole, and everything after it (a solve's
    # loop) would run replicated. So only a zero scalar goes through the check, and
    # is added to `x`'s floating-point arrays: `x` still depends on the check (which
    # therefore runs first) and keeps its own sharding.
    leaves = [leaf for leaf in jax.tree.leaves(x) if eqx.is_inexact_array(leaf)]
    if not leaves:
        return check(x)
    zero = check(jnp.zeros((), leaves[0].dtype))
    return jax.tree.map(
        lambda a: a + zero.astype(a.dtype) if eqx.is_inexact_array(a) else a, x
    )


def error_if(x: PyTree, pred: Bool[ArrayLike, "..."], msg: str) -> PyTree:
    """`eqx.error_if(x, pred, msg)` that keeps `x`'s sharding (see
    `superdiff.train.sample_sharded`)."""
    return _through_a_scalar(lambda v: eqx.error_if(v, pred, msg), x)


def branched_error_if(
    x: PyTree,
    pred: Bool[ArrayLike, "..."],
    index: Int[ArrayLike, "..."],
    msgs: Sequence[str],
) -> PyTree:
    """`eqx.branched_error_if(x, pred, index, msgs)` that keeps `x`'s sharding."""
    return _through_a_scalar(lambda v: eqx.branched_error_if(v, pred, index, msgs), x)
