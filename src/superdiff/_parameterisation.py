"""Parameterisations: turning what a network predicts into a score."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._sde import AbstractSDE


class EpsilonScore(eqx.Module):
    """The score of a noise-prediction network: $\\nabla\\log q_t(x) =
    -\\hat\\varepsilon(t, x) / \\sigma_t$.

    **Arguments:**

    - `network`: any callable `(t, x) -> ε̂` on one example (a
      `superdiff.nn.MLP`, a `superdiff.nn.UNet`, ...).
    - `sde`: the schedule it was trained under.
    """

    network: Callable[[Array, Array], Array]
    sde: AbstractSDE

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, "*d"]
    ) -> Float[Array, "*d"]:
        return -self.network(jnp.asarray(t), x) / self.sde.sigma(t)
