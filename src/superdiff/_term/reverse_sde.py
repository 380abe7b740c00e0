"""The reverse SDE of one score as Diffrax terms, in forward reverse time $\\tau$
(`docs/math.md` §2)."""

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array

from .._model import ScoreFn, batched
from .._schedule import AbstractSDE


# ------------------------------------------------------------ reverse SDE


class ReverseDrift(eqx.Module):
    r"""Drift of the reverse-time process (Skreta et al. 2025, Prop. 1;
    `docs/math.md` (2.1)) on a batch, in $\tau$:

    $$u_\tau(x) = -f_t x + (\tfrac{g_t^2}{2} + \xi_t)\,\nabla\log q_t(x),
    \qquad \xi_t = \tfrac{\text{noise\_scale}}{2} g_t^2,\quad t = t_{max} - \tau.$$

    `noise_scale = 1` is the reverse SDE, `0` the probability-flow ODE. `score` is
    any `(t, x) -> score` on one example (a `batched(t, x)` method, as score
    families have, is used on batches).
    """

    sde: AbstractSDE
    score: ScoreFn
    t_max: float | Array
    noise_scale: float = 1.0

    def __call__(self, tau, x, args):
        t = self.t_max - jnp.asarray(tau)
        g2 = self.sde.diffusion_squared(t)
        coef = 0.5 * g2 * (1 + self.noise_scale)
        return -self.sde.drift_coef(t) * x + coef * batched(self.score, t, x)


class ReverseDiffusion(eqx.Module):
    r"""Diffusion of the reverse-time process, $\sqrt{2\xi_t}\,I$ on a batch."""

    sde: AbstractSDE
    t_max: float | Array
    noise_scale: float = 1.0

    def __call__(self, tau, x, args):
        t = self.t_max - jnp.asarray(tau)
        g = jnp.sqrt(self.noise_scale * self.sde.diffusion_squared(t))
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, x.shape).astype(x.dtype))


def reverse_sde_terms(
    sde: AbstractSDE,
    score: ScoreFn,
    brownian: dfx.AbstractBrownianPath,
    t_max: float | Array | None = None,
    noise_scale: float = 1.0,
) -> dfx.MultiTerm:
    r"""The reverse SDE on a batch `x` of shape `(n, *d)`, as
    `MultiTerm(ODETerm(ReverseDrift), ControlTerm(ReverseDiffusion, brownian))`.

    Its noise $\sqrt{2\xi_t}\,dW$ is additive, so its Itô and Stratonovich
    solutions agree and any Diffrax SDE solver converges to it. `score` is any
    `(t, x) -> score` on one example.
    """
    t_max = sde.t_max if t_max is None else t_max
    return dfx.MultiTerm(
        dfx.ODETerm(ReverseDrift(sde, score, t_max, noise_scale)),
        dfx.ControlTerm(ReverseDiffusion(sde, t_max, noise_scale), brownian),
    )
