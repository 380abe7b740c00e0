"""The base of every schedule: a Gaussian path $(\\alpha_t, \\sigma_t)$ and the
forward SDE it defines (`docs/math.md` §1)."""

import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._util import describe, ensure, positive


Scalar = Float[ArrayLike, ""]
# A time or schedule parameter: a Python number, or an array (traced under `jax.jit`).
Number = float | Array


class AbstractSDE(eqx.Module):
    """A Gaussian-path diffusion on `t ∈ [t_min, t_max]` (data at `t = 0`).

    Subclasses give `log_alpha(t)` and `log_sigma(t)`; everything else follows.
    All methods act on one example and a scalar time; `jax.vmap` for batches.
    """

    t_min: eqx.AbstractVar[Number]
    t_max: eqx.AbstractVar[Number]

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

    def prior_sample(
        self, shape: tuple[int, ...], *, key: PRNGKeyArray, t_max: Scalar | None = None
    ) -> Array:
        """Draw from $\\mathcal N(0, \\sigma_{t_{max}}^2 I)$, the starting noise of
        every sampler (the prior when `t_max` is the schedule's own)."""
        t_max = self.t_max if t_max is None else t_max
        return self.sigma(t_max) * jax.random.normal(key, shape)

    def prior_log_prob(
        self, x: Float[Array, "*d"], t_max: Scalar | None = None
    ) -> Float[Array, ""]:
        """$\\log\\mathcal N(x; 0, \\sigma_{t_{max}}^2 I)$ of one example."""
        t_max = self.t_max if t_max is None else t_max
        log_std = self.log_sigma(t_max)
        return -0.5 * jnp.sum((x * jnp.exp(-log_std)) ** 2) - x.size * (
            log_std + 0.5 * math.log(2 * math.pi)
        )

    def time_range(
        self, t_min: Scalar | None = None, t_max: Scalar | None = None
    ) -> tuple[Number, Number]:
        """`(t_min, t_max)` with the schedule's defaults filled in, checked to lie in
        its range and in order: at once where they are known, at run time where
        they are traced (`superdiff._util.ensure`), so that a sweep over them
        compiles once. Python numbers come back as Python floats."""
        t_min = self.check_time(self.t_min if t_min is None else t_min, "t_min")
        t_max = self.check_time(self.t_max if t_max is None else t_max, "t_max")
        order = f"Expected `t_min < t_max`; got t_min={describe(t_min)}, t_max={{got}}."
        return t_min, ensure(t_max, lambda t: t > t_min, order, keep_python=True)

    def check_time(self, t: Scalar, name: str = "t") -> Number:
        """`t` as an array, checked to be a scalar in `[t_min, t_max]`."""
        message = (
            f"`{name}` must lie in the schedule's range [t_min, t_max] = "
            f"[{describe(self.t_min)}, {describe(self.t_max)}] of {type(self).__name__}; "
            "got {got}."
        )
        if np.ndim(t) != 0:
            raise ValueError(message.format(got=f"an array of shape {np.shape(t)}"))
        # Numbers stay numbers: Diffrax then sees the same times whether or not the
        # caller is under `jax.jit` (a Brownian path's draws depend on their bits).
        return ensure(
            t, lambda s: (self.t_min <= s) & (s <= self.t_max), message,
            keep_python=True,
        )  # fmt: skip


def time_fields(t_min: Scalar, t_max: Scalar) -> tuple[Any, Any]:
    """A schedule's own `t_min`, `t_max`, checked: positive, finite and ordered."""
    t_min = ensure(
        t_min,
        positive,
        "`t_min` must be positive and finite; got {got}.",
        keep_python=True,
    )
    t_max = ensure(
        t_max,
        lambda t: positive(t) & (t > t_min),
        f"`t_max` must be finite and above t_min={describe(t_min)}; got {{got}}.",
        keep_python=True,
    )
    return t_min, t_max
