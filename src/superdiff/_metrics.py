"""Sample-quality metrics for low-dimensional experiments."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _mean_distance(a: Array, b: Array, chunk: int = 1024) -> Array:
    """Mean Euclidean distance over all pairs, in chunks of rows to bound memory."""
    total = jnp.zeros((), a.dtype)
    for start in range(0, a.shape[0], chunk):
        block = a[start : start + chunk]
        diff = block[:, None, :] - b[None, :, :]
        total = total + jnp.sum(jnp.sqrt(jnp.sum(diff**2, axis=-1) + 1e-30))
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, ""]:
    """The (squared) energy distance $2E\\lVert X - Y\\rVert - E\\lVert X - X'\\rVert
    - E\\lVert Y - Y'\\rVert$ (Székely & Rizzo 2013), V-statistic form; zero iff the
    laws agree."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"Expected two batches of points (n, d) and (m, d); got {x.shape} and "
            f"{y.shape}."
        )
    return 2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


def nearest_share(
    samples: Float[Array, "n d"],
    first: Float[Array, "k d"],
    second: Float[Array, "m d"],
) -> Float[Array, ""]:
    """The share of `samples` whose nearest point of `first ∪ second` lies in
    `first` (e.g. the share of samples nearer the upper moon's data)."""

    def nearest(points):
        d2 = jax.vmap(lambda s: jnp.min(jnp.sum((points - s) ** 2, axis=1)))(samples)
        return d2

    return jnp.mean(nearest(first) < nearest(second))
