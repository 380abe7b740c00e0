"""Denoising score matching (Vincent 2011; Ho et al. 2020; Song et al. 2021)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._sde import AbstractSDE


def dsm_loss(
    network: Callable[[Array, Array], Array],
    sde: AbstractSDE,
    x0: Float[Array, "*d"],
    *,
    key: PRNGKeyArray,
    dropout: bool = False,
) -> Float[Array, ""]:
    """The ε-prediction loss for one example:
    $\\lVert\\hat\\varepsilon(t, \\alpha_t x_0 + \\sigma_t\\varepsilon) -
    \\varepsilon\\rVert^2$, mean over dimensions, with $t \\sim U[t_{min}, t_{max}]$.

    Weighting the score error by $\\sigma_t^2$, as this does, is the usual choice
    (Ho et al. 2020, Eq. 14; Song et al. 2021, $\\lambda(t) = \\sigma_t^2$).

    With `dropout=True` the network is called as `network(t, x, key=...)` with a
    key of this example's own (for networks with dropout, such as `UNet`).
    """
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    t = jax.random.uniform(t_key, minval=sde.t_min, maxval=sde.t_max)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    xt = sde.alpha(t) * x0 + sde.sigma(t) * noise
    if dropout:
        prediction = network(t, xt, key=dropout_key)  # pyright: ignore[reportCallIssue]
    else:
        prediction = network(t, xt)
    return jnp.mean((prediction - noise) ** 2)


def batch_dsm_loss(
    network: Callable[[Array, Array], Array],
    sde: AbstractSDE,
    x0: Float[Array, "n *d"],
    *,
    key: PRNGKeyArray,
    dropout: bool = False,
) -> Float[Array, ""]:
    """`dsm_loss` averaged over a batch, with an independent key per example."""
    keys = jax.random.split(key, x0.shape[0])
    loss = lambda x, k: dsm_loss(network, sde, x, key=k, dropout=dropout)
    return jnp.mean(jax.vmap(loss)(x0, keys))
