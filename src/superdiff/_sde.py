"""Gaussian-path SDEs defined by a schedule $(\\alpha_t, \\sigma_t)$.

Every diffusion here noises data as $x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon$. The
forward SDE $dx = f_t x\\,dt + g_t\\,dW$ with

$$f_t = \\frac{d}{dt}\\log\\alpha_t, \\qquad
g_t^2 = 2\\sigma_t^2 \\frac{d}{dt}\\log\\frac{\\sigma_t}{\\alpha_t}$$

has exactly these marginals (Skreta et al. 2025, Prop. 2), so a schedule is all a
subclass has to give: $f_t$ and $g_t^2$ are derived from it by autodiff. The classic
SDEs of Song et al. (2021) override them with their closed forms, which the tests
check against the derivation.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


Scalar = Float[ArrayLike, ""]


class AbstractSDE(eqx.Module):
    """A Gaussian-path diffusion on `t ∈ [t_min, t_max]` (data at `t = 0`).

    Subclasses give `log_alpha(t)` and `log_sigma(t)`; everything else follows.
    All methods act on one example and a scalar time; `jax.vmap` for batches.
    """

    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    @abc.abstractmethod
    def log_alpha(self, t: Scalar) -> Float[Array, ""]:
        """$\\log\\alpha_t$, the log of the signal scale."""

    @abc.abstractmethod
    def log_sigma(self, t: Scalar) -> Float[Array, ""]:
        """$\\log\\sigma_t$, the log of the noise scale."""

    def alpha(self, t: Scalar) -> Float[Array, ""]:
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: Scalar) -> Float[Array, ""]:
        return jnp.exp(self.log_sigma(t))

    def log_snr(self, t: Scalar) -> Float[Array, ""]:
        """$\\lambda_t = \\log(\\alpha_t^2 / \\sigma_t^2)$ (Kingma & Gao 2023)."""
        return 2 * (self.log_alpha(t) - self.log_sigma(t))

    def time_at_log_snr(
        self, log_snr: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        """The time $t \\in [0, t_{max}]$ with $\\lambda_t$ = `log_snr`, elementwise.

        By bisection (64 halvings of $[0, t_{max}]$, exact to float64 rounding), which
        needs only that $\\lambda_t$ decreases in $t$ — true of every schedule with
        $g_t^2 > 0$, since $g_t^2 = -\\sigma_t^2\\,d\\lambda_t/dt$. Values outside
        $\\lambda$'s range on $[0, t_{max}]$ give the nearer end.
        """
        lam = jnp.asarray(log_snr, dtype=float)

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            too_early = self.log_snr(mid) > lam  # still cleaner than asked for
            return jnp.where(too_early, mid, lo), jnp.where(too_early, hi, mid)

        lo = jnp.zeros_like(lam)
        lo, hi = jax.lax.fori_loop(0, 64, halve, (lo, jnp.full_like(lam, self.t_max)))
        return 0.5 * (lo + hi)

    def drift_coef(self, t: Scalar) -> Float[Array, ""]:
        """$f_t = \\frac{d}{dt}\\log\\alpha_t$ (Skreta et al. 2025, Prop. 2)."""
        t = jnp.asarray(t, dtype=float)
        return jax.grad(self.log_alpha)(t)

    def diffusion_squared(self, t: Scalar) -> Float[Array, ""]:
        """$g_t^2 = 2\\sigma_t^2 \\frac{d}{dt}\\log(\\sigma_t/\\alpha_t)$ (Skreta et al.
        2025, Prop. 2)."""
        t = jnp.asarray(t, dtype=float)
        log_ratio = lambda s: self.log_sigma(s) - self.log_alpha(s)
        return 2 * self.sigma(t) ** 2 * jax.grad(log_ratio)(t)

    def marginal(
        self, t: Scalar, x0: Float[Array, "*d"]
    ) -> tuple[Float[Array, "*d"], Float[Array, ""]]:
        """Mean and standard deviation of $x_t \\mid x_0$."""
        return self.alpha(t) * x0, self.sigma(t)

    def marginal_sample(
        self, t: Scalar, x0: Float[Array, "*d"], *, key: PRNGKeyArray
    ) -> Float[Array, "*d"]:
        """Draw $x_t = \\alpha_t x_0 + \\sigma_t\\varepsilon$."""
        mean, std = self.marginal(t, x0)
        return mean + std * jax.random.normal(key, jnp.shape(x0), mean.dtype)

    def prior_std(self) -> Float[Array, ""]:
        """Standard deviation of the prior $\\mathcal N(0, \\sigma_{t_{max}}^2 I)$."""
        return self.sigma(self.t_max)

    def prior_sample(self, shape: tuple[int, ...], *, key: PRNGKeyArray) -> Array:
        """Draw from the prior $\\mathcal N(0, \\sigma_{t_{max}}^2 I)$."""
        return self.prior_std() * jax.random.normal(key, shape)

    def prior_log_prob(self, x: Float[Array, "*d"]) -> Float[Array, ""]:
        """Log-density of one example under the prior."""
        std = self.prior_std()
        d = x.size
        return -0.5 * jnp.sum((x / std) ** 2) - d * (
            jnp.log(std) + 0.5 * math.log(2 * math.pi)
        )

    def time_range(
        self, t_min: float | None = None, t_max: float | None = None
    ) -> tuple[float, float]:
        """`(t_min, t_max)` with the schedule's defaults filled in, checked to lie in
        its range and in order."""
        t_min = self.t_min if t_min is None else float(t_min)
        t_max = self.t_max if t_max is None else float(t_max)
        self.check_time(t_min, "t_min")
        self.check_time(t_max, "t_max")
        if not t_min < t_max:
            raise ValueError(
                f"Expected `t_min < t_max`; got t_min={t_min}, t_max={t_max}."
            )
        return t_min, t_max

    def check_time(self, t: float, name: str = "t") -> None:
        """Raise if a concrete time lies outside `[t_min, t_max]`."""
        if not (self.t_min <= t <= self.t_max):
            raise ValueError(
                f"`{name}` must lie in the schedule's range [t_min, t_max] = "
                f"[{self.t_min}, {self.t_max}] of {type(self).__name__}; got {t}."
            )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"`{name}` must be positive; got {value}.")


def _check_range(t_min: float, t_max: float) -> None:
    _check_positive(t_min=t_min, t_max=t_max)
    if not t_min < t_max:
        raise ValueError(f"Expected `t_min < t_max`; got t_min={t_min}, t_max={t_max}.")


class VPSDE(AbstractSDE):
    """Variance-preserving SDE (Song et al. 2021, Eq. 11; DDPM in continuous time).

    $\\alpha_t = \\exp(-\\tfrac12 B(t))$ with
    $B(t) = \\beta_{min} t + \\tfrac12(\\beta_{max} - \\beta_{min}) t^2$,
    $\\sigma_t = \\sqrt{1 - \\alpha_t^2}$, so $f_t = -\\tfrac12\\beta(t)$ and
    $g_t^2 = \\beta(t)$.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def __check_init__(self):
        _check_positive(beta_min=self.beta_min, beta_max=self.beta_max)
        _check_range(self.t_min, self.t_max)

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

    def log_sigma(self, t):
        return jnp.log(-jnp.expm1(-self._integrated_beta(t)))

    def diffusion_squared(self, t):
        return self.beta(t) * -jnp.expm1(-2 * self._integrated_beta(t))


class VESDE(AbstractSDE):
    """Variance-exploding SDE (Song et al. 2021, Eq. 9; SMLD in continuous time).

    $\\alpha_t = 1$, $\\sigma_t = \\sigma_{min}(\\sigma_{max}/\\sigma_{min})^t$, so
    $f_t = 0$ and $g_t^2 = \\frac{d}{dt}\\sigma_t^2$.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def __check_init__(self):
        _check_positive(sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(
                f"Expected `sigma_min < sigma_max`; got {self.sigma_min} and "
                f"{self.sigma_max}."
            )
        _check_range(self.t_min, self.t_max)

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
