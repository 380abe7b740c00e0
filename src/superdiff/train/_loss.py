"""Losses: denoising score matching (Vincent 2011; Ho et al. 2020; Song et al. 2021)
for noise-prediction networks, and cross-entropy for the classifier."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._schedule import AbstractSDE
from ..nn._classifier import Classifier


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
    key of this example's own (for networks with dropout, such as
    `superdiff.nn.UNet`).
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


def classifier_loss(
    model: Classifier,
    batch: tuple[Float[Array, "b h w c"], Int[Array, " b"]],
    key: PRNGKeyArray,
) -> Float[Array, ""]:
    """Mean cross-entropy of a batch `(images, labels)`, with dropout; a loss for
    `fit`, which feeds it the `(images, labels)` batches of
    `superdiff.data.image_batches`."""
    images, labels = batch
    keys = jax.random.split(key, images.shape[0])
    logits = jax.vmap(lambda x, k: model(x, key=k))(images, keys)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
