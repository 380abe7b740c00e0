"""Parameterisations: turning what a network predicts into a score."""

import math
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._schedule import AbstractSDE


def _range(value) -> tuple[float, ...] | None:
    # A lone number becomes a 1-tuple, so that `__check_init__` names what arrived.
    return None if value is None else tuple(float(v) for v in np.atleast_1d(value))


class EpsilonScore(eqx.Module):
    r"""The score of a noise-prediction network: $\nabla\log q_t(x) =
    -\hat\varepsilon(t, x) / \sigma_t$ (`docs/math.md` (1.8)).

    **Arguments:**

    - `network`: any callable `(t, x) -> ε̂` on one example (a
        `superdiff.nn.MLP`, a `superdiff.nn.UNet`, ...).
    - `sde`: the schedule it was trained under.
    - `clip_x0`: `(low, high)`, or `None` (the default) for the plain score. Given,
        the network's estimate of the clean data, $\hat x_0 = (x -
        \sigma_t\hat\varepsilon)/\alpha_t$, is clipped to `[low, high]` and the
        score is the one of the clipped estimate, (1.10): DDPM's "clip denoised"
        for data known to lie in a box (images in $[-1, 1]$). It changes nothing
        where $\hat x_0$ is in the range, and keeps an undertrained network's
        samples from drifting out of it; the result is then no longer exactly
        the network's score, so densities tracked with it are those of the
        clipped model.
    """

    network: Callable[[Array, Array], Array]
    sde: AbstractSDE
    clip_x0: tuple[float, ...] | None = eqx.field(
        static=True, default=None, converter=_range
    )

    def __check_init__(self):
        if self.clip_x0 is not None:
            ok = len(self.clip_x0) == 2 and all(map(math.isfinite, self.clip_x0))
            if not (ok and self.clip_x0[0] < self.clip_x0[1]):
                raise ValueError(
                    "`clip_x0` must be `(low, high)` with finite low < high; got "
                    f"{self.clip_x0}."
                )

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, "*d"]
    ) -> Float[Array, "*d"]:
        eps = self.network(jnp.asarray(t), x)
        sigma = self.sde.sigma(t)
        score = -eps / sigma
        if self.clip_x0 is None:
            return score
        # (1.10) as the plain score plus what the clipping moves, so that it is
        # the plain score to the last bit wherever x̂₀ is in the range.
        alpha = self.sde.alpha(t)
        x0 = (x - sigma * eps) / alpha
        low, high = self.clip_x0
        return score + alpha * (jnp.clip(x0, low, high) - x0) / sigma**2
