"""The probability-flow ODE, optionally guided and with $\\log q$ integrated
alongside (`docs/math.md` §4, §6)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._density import AbstractDivergence
from .._guidance import AbstractGuidance, ScoreScale
from .._model import ScoreFn
from .._schedule import AbstractSDE
from .._util import inner


# ------------------------------------------------------- probability flow


class FlowState(eqx.Module):
    """The state of a probability-flow solve: the batch, optionally its tracked
    $\\log q$, `(n,)`, and the divergence's fixed probes, `(n, p, *d)`."""

    x: Float[Array, "n *d"]
    log_q: Float[Array, " n"] | None = None
    probes: Float[Array, "n p *d"] | None = None


class ProbabilityFlow(eqx.Module):
    r"""The probability-flow ODE on a `FlowState`, in $\tau$, for `diffrax.ODETerm`
    (Song et al. 2021, Eq. 13; Karczewski et al. 2025b; `docs/math.md` §4, §6):

    $$\frac{dx}{d\tau} = -f_t x + \tfrac12 g_t^2\,\eta_t(x)\,s_t(x),\qquad
    \frac{d\log q_t(x_\tau)}{d\tau} = d f_t - \tfrac12 g_t^2\,\nabla\cdot s
    + \tfrac12 g_t^2(\eta - 1)\lVert s\rVert^2,$$

    with $\eta$ from the guidance rule; the plain PF-ODE is the rule of scale 1,
    `ScoreScale(1.0)` (the default). $\log q$ is integrated when the state carries one
    (`log_q` not `None`); its divergence $\nabla\cdot s$ comes from `divergence`,
    which a guidance rule that reads the Laplacian needs too. With neither, this is
    exactly the PF-ODE on `x`, and an adaptive solver sees only `x`.
    """

    sde: AbstractSDE
    score: ScoreFn
    t_max: float | Array
    guidance: AbstractGuidance = eqx.field(default_factory=lambda: ScoreScale(1.0))
    divergence: AbstractDivergence | None = None

    def __call__(self, tau, y: FlowState, args) -> FlowState:
        t = self.t_max - jnp.asarray(tau)
        f, g2 = self.sde.drift_coef(t), self.sde.diffusion_squared(t)

        def one(x, probes):
            fn = lambda v: self.score(t, v)
            if self.divergence is None:
                score, div = fn(x), None
            else:
                score, div = self.divergence(fn, x, probes)
            eta = self.guidance.scale(t, x, score, div, self.sde)
            u = -f * x + 0.5 * g2 * eta * score
            if y.log_q is None:
                return u, None
            extra = 0.5 * g2 * (eta - 1) * inner(score, score)
            if div is None:
                raise ValueError("Tracking log q along the flow needs `divergence`.")
            return u, x.size * f - 0.5 * g2 * div + extra

        u, dlog_q = jax.vmap(one)(y.x, y.probes)
        probes = None if y.probes is None else jnp.zeros_like(y.probes)
        return FlowState(u, dlog_q, probes)
