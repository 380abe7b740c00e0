"""The variance-exploding schedule (Song et al. 2021)."""

import jax.numpy as jnp
from jaxtyping import Array

from .._util import describe, ensure, positive
from .base import AbstractSDE, time_fields


class VESDE(AbstractSDE):
    """Variance-exploding SDE (Song et al. 2021, Eq. 9; SMLD in continuous time).

    $\\alpha_t = 1$, $\\sigma_t = \\sigma_{min}(\\sigma_{max}/\\sigma_{min})^t$, so
    $f_t = 0$ and $g_t^2 = \\frac{d}{dt}\\sigma_t^2$.
    """

    sigma_min: float | Array
    sigma_max: float | Array
    t_min: float | Array
    t_max: float | Array

    def __init__(
        self,
        sigma_min: float | Array = 0.01,
        sigma_max: float | Array = 50.0,
        t_min: float | Array = 1e-5,
        t_max: float | Array = 1.0,
    ):
        self.sigma_min = ensure(
            sigma_min, positive, "`sigma_min` must be positive and finite; got {got}.",
            keep_python=True,
        )  # fmt: skip
        self.sigma_max = ensure(
            sigma_max,
            lambda s: positive(s) & (s > self.sigma_min),
            f"`sigma_max` must be finite and above sigma_min={describe(self.sigma_min)}; "
            "got {got}.",
            keep_python=True,
        )
        self.t_min, self.t_max = time_fields(t_min, t_max)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def log_sigma(self, t):
        # jnp, not math: the fields may be traced (a mixture passed through `jit`).
        log_ratio = jnp.log(self.sigma_max / self.sigma_min)
        return jnp.log(self.sigma_min) + jnp.asarray(t) * log_ratio

    def drift_coef(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def diffusion_squared(self, t):
        return 2 * jnp.log(self.sigma_max / self.sigma_min) * self.sigma(t) ** 2
