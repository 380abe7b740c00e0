"""Toy data: the two-moons distribution, one moon at a time or both."""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def two_moons(
    num: int,
    *,
    key: PRNGKeyArray,
    moon: str = "both",
    noise: float = 0.05,
    standardise: bool = True,
) -> Float[Array, "n 2"]:
    """Samples of the two-moons distribution (as `sklearn.datasets.make_moons`).

    **Arguments:**

    - `num`: number of points.
    - `key`: random key (keyword-only).
    - `moon`: `"upper"` (the arc over $[-1, 1]$), `"lower"` (the interleaved arc
        below it), or `"both"` (each point from either with probability ½).
    - `noise`: standard deviation of the Gaussian jitter.
    - `standardise`: shift and scale by the moons' fixed centre `(0.5, 0.25)` and
        scale `0.75`, so the data has roughly unit spread whichever moons are drawn.
    """
    if moon not in ("upper", "lower", "both"):
        raise ValueError(f"`moon` must be 'upper', 'lower' or 'both'; got {moon!r}.")
    if num < 1:
        raise ValueError(f"`num` must be positive; got {num}.")
    angle_key, choice_key, noise_key = jax.random.split(key, 3)
    angle = jax.random.uniform(angle_key, (num,), maxval=math.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    lower = jnp.stack([1 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
    if moon == "upper":
        x = upper
    elif moon == "lower":
        x = lower
    else:
        pick = jax.random.bernoulli(choice_key, 0.5, (num, 1))
        x = jnp.where(pick, upper, lower)
    x = x + noise * jax.random.normal(noise_key, x.shape)
    if standardise:
        x = (x - jnp.array([0.5, 0.25])) / 0.75
    return x
