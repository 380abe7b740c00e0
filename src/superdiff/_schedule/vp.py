"""Variance-preserving and sub-VP schedules (Song et al. 2021)."""

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._util import describe, ensure, positive
from .base import AbstractSDE, Scalar, time_fields


class VPSDE(AbstractSDE):
    """Variance-preserving SDE (Song et al. 2021, Eq. 11; DDPM in continuous time).

    $\\alpha_t = \\exp(-\\tfrac12 B(t))$ with
    $B(t) = \\beta_{min} t + \\tfrac12(\\beta_{max} - \\beta_{min}) t^2$,
    $\\sigma_t = \\sqrt{1 - \\alpha_t^2}$, so $f_t = -\\tfrac12\\beta(t)$ and
    $g_t^2 = \\beta(t)$.
    """

    beta_min: float | Array
    beta_max: float | Array
    t_min: float | Array
    t_max: float | Array

    def __init__(
        self,
        beta_min: float | Array = 0.1,
        beta_max: float | Array = 20.0,
        t_min: float | Array = 1e-3,
        t_max: float | Array = 1.0,
    ):
        # Numbers stay numbers and arrays stay arrays (traced under `jax.jit`, so a
        # sweep over a schedule compiles once); both are checked (`ensure`).
        self.beta_min = ensure(
            beta_min, positive, "`beta_min` must be positive and finite; got {got}.",
            keep_python=True,
        )  # fmt: skip
        self.beta_max = ensure(
            beta_max,
            lambda b: positive(b) & (b >= self.beta_min),
            f"`beta_max` must be finite and at least beta_min={describe(self.beta_min)} "
            "(β(t) grows from beta_min at t = 0 to beta_max at t = 1); got {got}.",
            keep_python=True,
        )
        self.t_min, self.t_max = time_fields(t_min, t_max)

    def beta(self, t: Scalar) -> Float[Array, ""]:
        return jnp.asarray(self.beta_min + (self.beta_max - self.beta_min) * t)

    def _integrated_beta(self, t: Scalar) -> Float[Array, ""]:
        return jnp.asarray(
            self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        )

    def log_alpha(self, t):
        return -0.5 * self._integrated_beta(t)

    def log_sigma(self, t):
        # sqrt(1 - exp(-B)) with expm1 for accuracy at small t.
        return 0.5 * jnp.log(-jnp.expm1(-self._integrated_beta(t)))

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_squared(self, t):
        return self.beta(t)


class SubVPSDE(VPSDE):
    """Sub-variance-preserving SDE (Song et al. 2021, Eq. 17).

    $\\alpha_t$ as for VP, $\\sigma_t = 1 - \\alpha_t^2$, so
    $g_t^2 = \\beta(t)(1 - \\alpha_t^4)$.
    """

    def __init__(
        self,
        beta_min: float | Array = 0.1,
        beta_max: float | Array = 20.0,
        t_min: float | Array = 1e-3,
        t_max: float | Array = 1.0,
    ):
        VPSDE.__init__(self, beta_min, beta_max, t_min, t_max)

    def log_sigma(self, t):
        return jnp.log(-jnp.expm1(-self._integrated_beta(t)))

    def diffusion_squared(self, t):
        return self.beta(t) * -jnp.expm1(-2 * self._integrated_beta(t))
