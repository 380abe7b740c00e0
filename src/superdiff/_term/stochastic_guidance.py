"""Stochastic density guidance as one Diffrax term (`docs/math.md` §6)."""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._density import AbstractDivergence
from .._guidance import AbstractGuidance, sigma_score_norm2
from .._model import ScoreFn
from .._schedule import AbstractSDE
from .._util import inner
from .flow import FlowState


# ------------------------------------------------------- stochastic guidance


class _StepInputs(eqx.Module):
    """What the vector field hands the step: the state and the time; the score, its
    Laplacian and the weights are computed in `prod`, where the step's probes are."""

    t: Array
    x: Array
    log_q: Array


class StochasticGuidanceTerm(dfx.AbstractTerm):
    """Stochastic density guidance (Karczewski et al. 2025b, §4.2) on a batch, as one
    Diffrax term with control $(d\\tau, dW, dV)$:

    $$dx = -f x\\,d\\tau + \\tfrac12 g^2\\eta' s\\,d\\tau + \\varphi g\\,P\\,dW,
    \\qquad P = I - \\hat s\\hat s^\\top,$$

    $$\\eta' = \\eta - \\frac{\\varphi^2\\sigma^2\\,\\mathrm{tr}(P\\nabla s)}
    {\\lVert\\sigma s\\rVert^2}.$$

    The noise is orthogonal to the score, so by Itô's formula $\\log q$ gets no noise
    and the drift $\\tfrac12\\varphi^2 g^2\\,\\mathrm{tr}(P\\nabla s)$, which the
    correction in $\\eta'$ cancels: $\\log q$ follows the guidance's rate as in the
    deterministic flow. $\\mathrm{tr}(P\\nabla s) = \\Delta\\log q - \\hat s^\\top
    \\nabla s\\,\\hat s$; the paper drops the second term as small, we keep it (one
    more JVP of the linearisation the Laplacian needs anyway). $\\Delta\\log q$ is
    estimated by `laplacian`: Hutchinson with probes made from the increment $dV$ of
    a second Brownian path (Gaussian: $dV/\\sqrt{d\\tau}$; Rademacher: its signs), so
    each step gets fresh, independent probes, or exactly.

    The tracked increment is $\\big(d f - \\tfrac12 g^2\\Delta\\log q +
    \\tfrac12 g^2(\\eta' - 1)\\lVert s\\rVert^2 + \\tfrac12\\varphi^2 g^2
    \\mathrm{tr}(P\\nabla s)\\big)\\,d\\tau$. Everything is a function of the realised
    Euler–Maruyama step, so use `diffrax.Euler`.
    """

    sde: AbstractSDE
    score: ScoreFn
    t_max: float | Array
    guidance: AbstractGuidance
    laplacian: AbstractDivergence
    noise: Callable[[Any], Any]
    brownian: dfx.AbstractBrownianPath
    probe_brownian: dfx.AbstractBrownianPath | None
    min_norm: float = 1e-6

    def vf(self, t, y: FlowState, args) -> _StepInputs:
        assert y.log_q is not None
        return _StepInputs(self.t_max - jnp.asarray(t), y.x, y.log_q)

    def contr(self, t0, t1, **kwargs):
        dv = None
        if self.probe_brownian is not None:
            dv = self.probe_brownian.evaluate(t0, t1, **kwargs)
        return t1 - t0, self.brownian.evaluate(t0, t1, **kwargs), dv

    def prod(self, vf: _StepInputs, control) -> FlowState:
        dtau, dw, dv = control
        t, sde = vf.t, self.sde
        f, g2, sigma2 = sde.drift_coef(t), sde.diffusion_squared(t), sde.sigma(t) ** 2
        phi = jnp.asarray(self.noise(t))
        probes = None if dv is None else self.laplacian.probes_from_increment(dv, dtau)

        def one(x, dw, probes):
            score, jvp = jax.linearize(lambda v: self.score(t, v), x)
            lap = self.laplacian.trace(jvp, x, probes)
            norm2 = sigma_score_norm2(sde, t, score, self.min_norm)
            unit = score * jnp.sqrt(sigma2 / norm2)
            trace_p = lap - inner(unit, jvp(unit))
            eta = self.guidance.scale(t, x, score, lap, sde)
            eta = eta - phi**2 * sigma2 * trace_p / norm2
            noise = phi * jnp.sqrt(g2) * (dw - unit * inner(unit, dw))
            dx = (-f * x + 0.5 * g2 * eta * score) * dtau + noise
            rate = (
                x.size * f
                - 0.5 * g2 * lap
                + 0.5 * g2 * (eta - 1) * inner(score, score)
                + 0.5 * phi**2 * g2 * trace_p
            )
            return dx, rate * dtau

        dx, dlog_q = jax.vmap(one)(vf.x, dw, probes)
        return FlowState(dx, dlog_q)
