"""The PF-ODE with its first-order sensitivity, for score alignment
(`docs/math.md` §6)."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._density import AbstractDivergence
from .._model import ScoreFn
from .._schedule import AbstractSDE


class AlignmentState(eqx.Module):
    """The state of `ScoreAlignmentFlow`: the batch, its tangents $v$, the tracked
    $\\omega = \\langle s, v\\rangle$, and the divergence's fixed probes."""

    x: Float[Array, "n *d"]
    v: Float[Array, "n *d"]
    omega: Float[Array, " n"]
    probes: Float[Array, "n p *d"] | None = None


class ScoreAlignmentFlow(eqx.Module):
    """The PF-ODE with its first-order sensitivity, on a batch, in $\\tau$:
    $dx/d\\tau = u(x)$, $dv/d\\tau = J_u(x)\\,v$ (so $v_\\tau$ is the push-forward of
    $v_0$), and, when `divergence` is given,
    $d\\omega/d\\tau = -\\nabla_x\\cdot(J_u(x)\\,v)$, $v$ held fixed in the
    divergence (Karczewski et al. 2025b, App. on score alignment).

    Why $\\omega$: with $L = \\log q$ transported by the flow,
    $\\frac{d}{d\\tau}\\nabla L(x_\\tau) = -\\nabla(\\nabla\\cdot u) - J_u^\\top\\nabla L$,
    so $\\frac{d}{d\\tau}\\langle\\nabla L, v\\rangle = -\\langle\\nabla(\\nabla\\cdot
    u), v\\rangle$: started at $\\omega_0 = \\langle s_{t_{max}}, v_0\\rangle$, $\\omega$
    equals $\\langle s, v\\rangle$ all along, without the score at the end.
    """

    sde: AbstractSDE
    score: ScoreFn
    t_max: float | Array
    divergence: AbstractDivergence | None = None

    def __call__(self, tau, y: AlignmentState, args) -> AlignmentState:
        t = self.t_max - jnp.asarray(tau)
        f, g2 = self.sde.drift_coef(t), self.sde.diffusion_squared(t)
        drift = lambda x: -f * x + 0.5 * g2 * self.score(t, x)

        def one(x, v, probes):
            u, jv = jax.jvp(drift, (x,), (v,))
            if self.divergence is None:
                return u, jv, jnp.zeros((), x.dtype)
            _, div = self.divergence(lambda z: jax.jvp(drift, (z,), (v,))[1], x, probes)
            return u, jv, -div

        u, jv, domega = jax.vmap(one)(y.x, y.v, y.probes)
        probes = None if y.probes is None else jnp.zeros_like(y.probes)
        return AlignmentState(u, jv, domega, probes)
