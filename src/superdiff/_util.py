"""Small helpers shared by the modules."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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


def concrete(value: ArrayLike) -> np.ndarray | None:
    """`value` as a NumPy array if it is known now (a Python or NumPy number, a
    concrete JAX array, even inside `jax.jit`), `None` if it is traced."""
    try:
        return np.asarray(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def ensure(
    value: ArrayLike,
    ok: Callable[[Array], ArrayLike],
    message: str,
    *,
    dtype=None,
    keep_python: bool = False,
) -> Any:
    """`value` as a JAX array, checked by `ok` (elementwise, all must hold): the
    one check for every numeric parameter, concrete or traced.

    Where the value is known now (a Python number, a concrete array, also inside
    `jax.jit`), a failed check raises `ValueError(message)` at once, with what
    arrived. Where it is traced (a parameter swept under `jax.jit` or `jax.vmap`),
    the check is attached with `eqx.error_if` and raises at run time, without
    pulling the value to the host; either way the value stays an array, so a sweep
    over it compiles once. `message` names what was expected; `{got}` in it is
    replaced by the value where it is known. With `keep_python`, a Python number
    that passes comes back as a Python `float` (a schedule's defaults stay plain
    numbers); arrays come back as arrays.
    """
    with jax.ensure_compile_time_eval():  # keep known values known under `jax.jit`
        array = jnp.asarray(value) if dtype is None else jnp.asarray(value, dtype)
        holds = jnp.all(ok(array))
    known = concrete(holds)
    if known is None:  # traced: the value, or what `ok` compares it with
        return eqx.error_if(array, ~holds, message.format(got="a traced value"))
    if not bool(known):
        raise ValueError(message.format(got=describe(value)))
    if keep_python and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return array


def describe(value) -> str:
    known = concrete(value)
    if known is None:
        return "a traced value"
    if known.ndim == 0:
        item = known.item()
        return f"{item:.6g}" if isinstance(item, float) else repr(item)
    return repr(known.tolist())


def finite(x: Array) -> Array:
    return jnp.isfinite(x)


def positive(x: Array) -> Array:
    """Finite and positive."""
    return jnp.isfinite(x) & (x > 0)


def require_declared(cls: type, name: str, what: str) -> None:
    """Refuse, when a class is defined, a concrete subclass (one whose name does not
    start with `Abstract`) that does not declare the class variable `name`: a
    capability is stated by each class, never defaulted. `what` says what to
    declare and why."""
    if cls.__name__.startswith("Abstract"):
        return
    if not any(name in vars(k) for k in cls.__mro__):
        raise TypeError(
            f"`{cls.__name__}` must declare `{name}: ClassVar[bool]`: {what} Name "
            "the class `Abstract...` to leave it to its subclasses."
        )
