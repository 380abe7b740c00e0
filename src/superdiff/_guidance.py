"""Guidance rules: how the score is rescaled to control the log-density of samples
(Karczewski, Heinonen & Garg 2025a, b). The samplers that use them are in
`_guided.py`; the flows they drive, `ProbabilityFlow` and `StochasticGuidanceTerm`,
in `_terms.py`.

Everything here is in the library's convention: reverse time $\\tau = t_{max} - t$
runs forward from noise to data, and the model's probability-flow field is
$u = -f_t x + \\tfrac12 g_t^2 s_t(x)$. Each sampler is that ODE with the score
rescaled by a factor $\\eta_t(x)$,

$$\\frac{dx}{d\\tau} = -f_t x + \\tfrac12 g_t^2\\,\\eta_t(x)\\,s_t(x),$$

solved with `diffrax.diffeqsolve`. Along any flow $dx/d\\tau = u + c\\,s$ the
model's log-density changes as (Fokker–Planck for $\\partial_\\tau\\log q$, then
the chain rule)

$$\\frac{d}{d\\tau}\\log q_t(x_\\tau) = -\\nabla\\cdot u + c\\lVert s\\rVert^2
= d f_t - \\tfrac12 g_t^2\\,\\nabla\\cdot s + c\\lVert s\\rVert^2,
\\qquad c = \\tfrac12 g_t^2(\\eta - 1),$$

so the extra term $c\\,s$ is the smallest change of the drift that sets the rate
(Karczewski et al. 2025b, Eq. 8; `docs/math.md` §6). For every Gaussian path
$g_t^2 = -\\sigma_t^2\\,d\\lambda_t/dt$, so $d\\lambda/d\\tau = g_t^2/\\sigma_t^2$:
one unit of log-SNR $\\lambda$ is $\\sigma_t^2/g_t^2$ units of $\\tau$. Their code
works in $\\lambda$ from −10 to 10 with $\\tilde f = \\tfrac12\\sigma^2$, which is
this convention with the clock changed.
"""

import abc
import math
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._schedule import AbstractSDE
from ._util import ensure, inner, positive


def _scalar(value, name: str) -> Array:
    if np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {np.shape(value)}.")
    return jnp.asarray(value)


def quantile(value, name: str = "q") -> Array:
    """A quantile in the open interval (0, 1), checked now where known and at run
    time where traced (so that a sweep over it compiles once)."""
    return ensure(
        _scalar(value, name),
        lambda q: (q > 0) & (q < 1),
        f"`{name}` must be a quantile in the open interval (0, 1); got {{got}}.",
    )


def _min_norm(value) -> Array:
    return ensure(
        _scalar(value, "min_norm"), positive, "`min_norm` must be positive; got {got}."
    )


def _finite(name: str):
    def convert(value) -> Array:
        message = f"`{name}` must be a finite number; got {{got}}."
        return ensure(_scalar(value, name), jnp.isfinite, message)

    return convert


# ------------------------------------------------------------- guidance rules


class AbstractGuidance(eqx.Module):
    """A rule for the score scale $\\eta_t(x)$ of the guided probability flow.

    `needs_laplacian` says whether $\\eta$ reads $\\Delta\\log q = \\nabla\\cdot s$
    (the samplers then estimate it with their `laplacian` divergence).
    """

    needs_laplacian: ClassVar[bool] = False

    @abc.abstractmethod
    def scale(
        self,
        t: Float[Array, ""],
        x: Float[Array, "*d"],
        score: Float[Array, "*d"],
        laplacian: Float[Array, ""] | None,
        sde: AbstractSDE,
    ) -> Float[Array, ""]:
        """$\\eta_t(x)$ for one example, given its score and (if needed) the
        Laplacian of $\\log q_t$ there."""

    def switch_time(self) -> Float[Array, ""] | None:
        """A time $t$ at which $\\eta$ jumps, which the sampler makes a step
        boundary (it may be traced); `None` (the default) for rules that change
        smoothly."""
        return None


def sigma_score_norm2(sde, t, score, floor: Float[ArrayLike, ""]) -> Array:
    """$\\lVert\\sigma_t s\\rVert^2$, floored at `floor`·d: the guidance divides by it
    and it vanishes at modes and saddles of $q_t$, where the correction is undefined.
    The floor keeps the drift finite there; the achieved rate then falls short."""
    value = sde.sigma(t) ** 2 * inner(score, score)
    return jnp.maximum(value, floor * score.size)


class ScoreScale(AbstractGuidance):
    """A constant score scale $\\eta$. `ScoreScale(2.0)` is the high-density ODE
    $dx/d\\tau = -f x + g^2 s$, the reverse SDE's drift without its noise
    (Karczewski et al. 2025a, §4); it raises $\\log q$ by
    $\\tfrac12(\\eta - 1)\\lVert\\sigma s\\rVert^2$ per unit $\\lambda$ over the
    PF-ODE's own rate."""

    eta: Float[Array, ""] = eqx.field(converter=_finite("eta"))

    def scale(self, t, x, score, laplacian, sde):
        return self.eta.astype(score.dtype)


class DensityQuantile(AbstractGuidance):
    """Density guidance in its quantile form (Karczewski et al. 2025b, Eqs. 12–14):

    $$\\eta_t(x) = 1 + \\frac{\\sqrt{2d}\\,\\Phi^{-1}(q)}{\\lVert\\sigma_t s_t(x)\\rVert^2}.$$

    In our convention this makes
    $d\\log q = -\\nabla\\cdot u\\,d\\tau + \\tfrac12\\sqrt{2d}\\,\\Phi^{-1}(q)\\,d\\lambda$:
    the PF-ODE's own rate plus a constant per unit log-SNR. Why that constant: the
    reverse SDE's log-density drifts faster than the PF-ODE's by
    $\\tfrac12 g^2(\\lVert s\\rVert^2 + \\Delta\\log q)\\,d\\tau
    = \\tfrac12\\sqrt{2d}\\,h\\,d\\lambda$ with
    $h = \\sigma^2(\\Delta\\log q + \\lVert s\\rVert^2)/\\sqrt{2d}$, which is about
    $\\mathcal N(0, 1)$ on $q_t$ for large $d$; the quantile form follows the rate
    of $h$'s $q$-quantile. So $q > 0.5$ raises $\\log q_0$ and $q < 0.5$ lowers it,
    and no divergence is needed.

    Over a whole run the extra is $\\tfrac12\\sqrt{2d}\\,\\Phi^{-1}(q)\\,
    (\\lambda_{t_{min}} - \\lambda_{t_{max}})$ nats (about 19 Φ⁻¹(q) at d = 2 under
    the default VP range), which must stay below what the density can give: at low
    $d$ only $q$ near 0.5 can be reached when raising.

    **Arguments:**

    - `q`: the quantile, in (0, 1).
    - `min_norm`: floor on $\\lVert\\sigma s\\rVert^2/d$ (see `sigma_score_norm2`).
    """

    # Arrays, not static floats, so that a sweep over q compiles once.
    q: Float[Array, ""] = eqx.field(converter=quantile)
    min_norm: Float[Array, ""] = eqx.field(default=1e-6, converter=_min_norm)

    def scale(self, t, x, score, laplacian, sde):
        quantile = jax.scipy.special.ndtri(self.q.astype(score.dtype))
        excess = math.sqrt(2 * score.size) * quantile
        return 1 + excess / sigma_score_norm2(sde, t, score, self.min_norm)


class DensityRate(AbstractGuidance):
    """Density guidance with a prescribed rate (Karczewski et al. 2025b, Eq. 8):
    $d\\log q_t(x_\\tau) = b_t(x)\\,d\\lambda$, by adding
    $\\frac{\\nabla\\cdot u + b\\,d\\lambda/d\\tau}{\\lVert s\\rVert^2}\\,s$ to the
    PF-ODE drift $u$, i.e.

    $$\\eta = 1 + \\frac{2\\,(b - \\frac{\\sigma^2}{g^2}(d f - \\tfrac12 g^2
    \\Delta\\log q))}{\\lVert\\sigma s\\rVert^2}.$$

    Needs the Laplacian $\\Delta\\log q = \\nabla\\cdot s$ (the sampler's
    `laplacian`, exact by default).

    **Arguments:**

    - `rate`: $b$, a callable `(t, x) -> scalar` on one example: the change of
        $\\log q$ per unit of log-SNR (which increases from noise to data).
    - `min_norm`: floor on $\\lVert\\sigma s\\rVert^2/d$.
    """

    rate: Callable[[Array, Array], ArrayLike]
    min_norm: Float[Array, ""] = eqx.field(default=1e-6, converter=_min_norm)
    needs_laplacian: ClassVar[bool] = True

    def __check_init__(self):
        if not callable(self.rate):
            raise TypeError(
                f"`rate` must be a callable `(t, x) -> scalar`; got {type(self.rate).__name__}."
            )

    def scale(self, t, x, score, laplacian, sde):
        assert laplacian is not None
        f, g2, sigma2 = sde.drift_coef(t), sde.diffusion_squared(t), sde.sigma(t) ** 2
        pf_rate = sigma2 / g2 * (x.size * f - 0.5 * g2 * laplacian)  # per unit λ
        wanted = jnp.asarray(self.rate(t, x))
        return 1 + 2 * (wanted - pf_rate) / sigma_score_norm2(
            sde, t, score, self.min_norm
        )


class SwitchedScoreScale(AbstractGuidance):
    """$\\eta = 1$ (PF-ODE) before the switch time, 2 (HD-ODE) after it. An array,
    so that a sweep over switch times compiles once."""

    t_switch: Float[Array, ""] = eqx.field(converter=_finite("t_switch"))

    def scale(self, t, x, score, laplacian, sde):
        return jnp.where(t <= self.t_switch, 2.0, 1.0).astype(score.dtype)

    def switch_time(self):
        return self.t_switch
