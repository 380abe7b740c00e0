"""Score alignment (Karczewski et al. 2025b, §5; `docs/math.md` §6): does moving a
latent up the prior's score raise the log-density of the sample it flows to?"""

from typing_extensions import Unpack

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._divergence import AbstractDivergence, ExactDivergence
from ._family import ScoreFn
from ._sde import AbstractSDE
from ._solve import (
    Samples,
    SolveOptions,
    fixed_probes,
    integrate,
    ode_start,
)
from ._util import inner


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
    t_max: float
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


def score_alignment(
    score: ScoreFn,
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"],
    *,
    method: str = "jvp",
    divergence: AbstractDivergence | None = None,
    key: PRNGKeyArray | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
    """Score alignment (Karczewski et al. 2025b, §5): for each latent $x_T$,
    $\\langle s_{t_{min}}(x_0),\\ D\\Phi(x_T)\\,s_{t_{max}}(x_T)\\rangle$, the data
    score against the push-forward of the noise score through the PF-ODE map
    $\\Phi$. It equals $\\langle\\nabla_{x_T}\\log q_{t_{min}}(\\Phi(x_T)),
    s_{t_{max}}(x_T)\\rangle$: positive means moving the latent up the prior's score
    (shrinking it, for a centred prior) raises $\\log q_0$ — then prior guidance
    with $q < 0.5$ raises it and $q > 0.5$ lowers it.

    - `method="jvp"`: the sensitivity ODE $dv/d\\tau = J_u v$ (one JVP per step),
        then the model's score at the end.
    - `method="divergence"`: the divergence-only variant, integrating
        $\\omega = \\langle s, v\\rangle$ by $d\\omega/d\\tau = -\\nabla\\cdot(J_u v)$
        with `divergence` (exact by default, or `Hutchinson`): no score needed at
        the end, so it also applies where that score is unreliable.

    The solve takes the `SolveOptions`, as `sample_ode`; `key` draws Hutchinson
    probes.

    **Returns:** `Samples` with `x` the PF-ODE's samples and `extras["alignment"]`,
    `(n,)`.
    """
    if method not in ("jvp", "divergence"):
        raise ValueError(f"`method` must be 'jvp' or 'divergence'; got {method!r}.")
    if method == "jvp" and divergence is not None:
        raise ValueError("`divergence` only applies with `method='divergence'`.")
    if method == "divergence":
        divergence = ExactDivergence() if divergence is None else divergence
    (t_min, t_max, solver, grid, throw), x = ode_start(
        score, sde, options, x_init=x_init
    )
    probes = fixed_probes(divergence, x.shape, key)
    v = jax.vmap(lambda xi: score(t_max, xi))(x)
    y0 = AlignmentState(x, v, jax.vmap(inner)(v, v), probes)
    term = dfx.ODETerm(ScoreAlignmentFlow(sde, score, t_max, divergence))
    y1, result = integrate(term, solver, y0, grid, throw=throw)
    if divergence is not None:
        alignment = y1.omega
    else:
        s1 = jax.vmap(lambda xi: score(t_min, xi))(y1.x)
        alignment = jax.vmap(inner)(s1, y1.v)
    return Samples(y1.x, extras={"alignment": alignment}, result=result)
