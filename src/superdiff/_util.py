"""Small helpers shared by the modules."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def inner(a: ArrayLike, b: ArrayLike) -> Array:
    """$\\langle a, b\\rangle$ over all axes of one example."""
    return jnp.sum(jnp.asarray(a) * jnp.asarray(b))
