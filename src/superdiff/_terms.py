r"""Reverse-time dynamics as Diffrax terms, in forward reverse time $\tau$.

Everything here is integrated from $\tau = 0$ (noise, $t = t_{max}$) to
$\tau = t_{max} - t_{min}$ (data), with $t = t_{max} - \tau$. Writing the reverse
process in forward time, rather than integrating with `t0 > t1`, is what makes
Diffrax's SDE solvers behave (`docs/math.md`, preamble and §3).

- `reverse_sde_terms`: the reverse SDE of one score (`docs/math.md` §2), for any
  Diffrax SDE solver.
- `ProbabilityFlow`: the probability-flow ODE, optionally with a guidance rule and
  with $\log q$ integrated alongside (`docs/math.md` §4, §6), for any ODE solver.
- `SuperpositionTerm`: M superposed models with every $\log q^i$ tracked
  (`docs/math.md` §3, §5), for `diffrax.Euler`.
- `StochasticGuidanceTerm`: stochastic density guidance (`docs/math.md` §6), for
  `diffrax.Euler`.
"""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, PyTree

from ._divergence import AbstractDivergence
from ._estimators import AbstractDensityEstimator
from ._family import AbstractScoreFamily, ScoreFn, batched
from ._guidance import AbstractGuidance, sigma_score_norm2
from ._operators import AbstractOperator, OperatorInputs, weighted_sum
from ._sde import AbstractSDE
from ._util import error_if, inner


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
    t_max: float
    noise_scale: float = 1.0

    def __call__(self, tau, x, args):
        t = self.t_max - jnp.asarray(tau)
        g2 = self.sde.diffusion_squared(t)
        coef = 0.5 * g2 * (1 + self.noise_scale)
        return -self.sde.drift_coef(t) * x + coef * batched(self.score, t, x)


class ReverseDiffusion(eqx.Module):
    r"""Diffusion of the reverse-time process, $\sqrt{2\xi_t}\,I$ on a batch."""

    sde: AbstractSDE
    t_max: float
    noise_scale: float = 1.0

    def __call__(self, tau, x, args):
        t = self.t_max - jnp.asarray(tau)
        g = jnp.sqrt(self.noise_scale * self.sde.diffusion_squared(t))
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, x.shape).astype(x.dtype))


def reverse_sde_terms(
    sde: AbstractSDE,
    score: ScoreFn,
    brownian: dfx.AbstractBrownianPath,
    t_max: float | None = None,
    noise_scale: float = 1.0,
) -> dfx.MultiTerm:
    r"""The reverse SDE on a batch `x` of shape `(n, *d)`, as
    `MultiTerm(ODETerm(ReverseDrift), ControlTerm(ReverseDiffusion, brownian))`.

    Its noise $\sqrt{2\xi_t}\,dW$ is additive, so its Itô and Stratonovich
    solutions agree and any Diffrax SDE solver converges to it. `score` is any
    `(t, x) -> score` on one example.
    """
    t_max = sde.t_max if t_max is None else float(t_max)
    return dfx.MultiTerm(
        dfx.ODETerm(ReverseDrift(sde, score, t_max, noise_scale)),
        dfx.ControlTerm(ReverseDiffusion(sde, t_max, noise_scale), brownian),
    )


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

    with $\eta = 1$ (the plain PF-ODE) when `guidance` is `None`, and $\eta$ from
    the guidance rule otherwise. $\log q$ is integrated when the state carries one
    (`log_q` not `None`); its divergence $\nabla\cdot s$ comes from `divergence`,
    which a guidance rule that reads the Laplacian needs too. With neither, this is
    exactly the PF-ODE on `x`, and an adaptive solver sees only `x`.
    """

    sde: AbstractSDE
    score: ScoreFn
    t_max: float
    guidance: AbstractGuidance | None = None
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
            if self.guidance is None:
                u = -f * x + 0.5 * g2 * score
                extra = 0.0
            else:
                eta = self.guidance.scale(t, x, score, div, self.sde)
                u = -f * x + 0.5 * g2 * eta * score
                extra = 0.5 * g2 * (eta - 1) * inner(score, score)
            if y.log_q is None:
                return u, None
            if div is None:
                raise ValueError("Tracking log q along the flow needs `divergence`.")
            return u, x.size * f - 0.5 * g2 * div + extra

        u, dlog_q = jax.vmap(one)(y.x, y.probes)
        probes = None if y.probes is None else jnp.zeros_like(y.probes)
        return FlowState(u, dlog_q, probes)


# --------------------------------------------------- superposition with tracking


class SuperpositionState(eqx.Module):
    """The augmented state: samples, every model's tracked log-density, and what the
    density estimator keeps of the last step for its correction (`carry`, per
    example and model; `None` for estimators without one). Build it with
    `SuperpositionTerm.init`."""

    x: Float[Array, "n *d"]
    log_q: Float[Array, "n M"]
    carry: PyTree[Array] | None = None


class _Evaluation(eqx.Module):
    """What the vector field gives the step: the scores at the current point and the
    schedule's coefficients. One network evaluation per model."""

    tau: Float[Array, ""]
    t: Float[Array, ""]
    x: Float[Array, "n *d"]
    log_q: Float[Array, "n M"]
    scores: Float[Array, "n M *d"]
    f: Float[Array, ""]
    g2: Float[Array, ""]
    carry: PyTree[Array] | None
    pending: Float[Array, "n M"]


_NOT_EULER = (
    "SuperpositionTerm is exact only under `diffrax.Euler()`: its weights and "
    "log-density increments are functions of the realised step taken from the start "
    "of each step, but the solver evaluated the term inside a step (a multi-stage "
    "solver such as Heun, Midpoint or ReversibleHeun, which would integrate the "
    "tracked log q to a wrong limit). Use `diffrax.Euler()`."
)


class SuperpositionTerm(dfx.AbstractTerm):
    r"""The reverse SDE driven by M superposed models, with every model's
    $\log q^i$ tracked alongside the samples (Skreta et al. 2025, Algorithm 1;
    `docs/math.md` §3, §5).

    The state is a `SuperpositionState` `(x, log_q)` of a batch; the control is
    $(d\tau, dW)$ from `brownian`. One step from `x`:

    1. the family's scores $s_i(x)$ (one network call per model: `vf`);
    2. weights $\kappa$ and a correction $c_i$ of the increments from the operator
       (`AbstractOperator.mix`), given this step's noise $g\,dW$ (AND needs it);
    3. $dx = (-f x + g^2\sum_i\kappa_i s_i)\,d\tau + g\,dW$;
    4. $\Delta\log q^i$ from the realised $dx$ by the estimator, plus $c_i$.

    An estimator with a correction that needs the score at the step's end
    (`KernelRatioEstimator`'s curvature correction) gets it in the next step's
    `vf`, before the weights are computed, so the weights read corrected
    log-densities; the last step's correction is `finish`'s, after the solve. Start
    the solve from `init(x, log_q)`.

    Because the weights and the estimate are functions of the realised step, this
    term is exact only under a solver that takes one Euler step with the whole
    control: `diffrax.Euler`. `sample` checks the solver before it starts; the term
    itself raises at run time if a solver evaluates it inside a step (Heun,
    Midpoint, ReversibleHeun, ...), unless built with `euler_only=False`, which is
    only for measuring what such solvers get wrong (`benchmarks/solver_accuracy.py`,
    `docs/solvers.md`).
    """

    family: AbstractScoreFamily
    operator: AbstractOperator
    estimator: AbstractDensityEstimator
    brownian: dfx.AbstractBrownianPath
    sde: AbstractSDE
    t_max: float
    euler_only: bool = eqx.field(static=True)

    def __init__(
        self,
        sde: AbstractSDE,
        family: AbstractScoreFamily,
        operator: AbstractOperator,
        brownian: dfx.AbstractBrownianPath,
        estimator: AbstractDensityEstimator | None = None,
        t_max: float | None = None,
        euler_only: bool = True,
    ):
        self.family = family
        self.operator = operator
        self.estimator = (
            operator.default_estimator() if estimator is None else estimator
        )
        self.brownian = brownian
        self.sde = sde
        self.t_max = sde.t_max if t_max is None else float(t_max)
        self.euler_only = euler_only

    def init(
        self, x: Float[Array, "n *d"], log_q: Float[Array, "n M"]
    ) -> SuperpositionState:
        """The starting state: `x` and `log_q` with a carry of zeros (no
        correction for the step before the first)."""

        def one_carry(x):
            return self.estimator.carry(x, x, x, 0.0, 1.0, 0.0)

        shapes = jax.eval_shape(jax.vmap(one_carry), x)
        if shapes is None:
            return SuperpositionState(x, log_q)
        carry = jax.tree.map(
            lambda a: jnp.zeros((a.shape[0], log_q.shape[1]) + a.shape[1:], a.dtype),
            shapes,
        )
        return SuperpositionState(x, log_q, carry)

    def _corrections(self, carry, scores: Array) -> Array:
        if carry is None:
            return jnp.zeros(scores.shape[:2], scores.dtype)
        return jax.vmap(jax.vmap(self.estimator.correction))(carry, scores)

    def finish(self, tau, y: SuperpositionState) -> Float[Array, "n M"]:
        """The log-densities at the end of the solve (reverse time `tau`), with the
        last step's correction, which needs the scores there: one more network
        call per model, made only by estimators that have a correction."""
        if y.carry is None:
            return y.log_q
        scores = self.family.batched(self.t_max - jnp.asarray(tau), y.x)
        return y.log_q + self._corrections(y.carry, scores)

    def vf(self, t, y: SuperpositionState, args) -> _Evaluation:
        model_t = self.t_max - jnp.asarray(t)
        if y.carry is None and self._has_carry(y.x[0]):
            raise ValueError(
                f"`{type(self.estimator).__name__}` keeps a carry between steps; "
                "start the solve from `SuperpositionTerm.init(x, log_q)`."
            )
        scores = self.family.batched(model_t, y.x)
        pending = self._corrections(y.carry, scores)
        return _Evaluation(
            jnp.asarray(t),
            model_t,
            y.x,
            y.log_q + pending,
            scores,
            self.sde.drift_coef(model_t),
            self.sde.diffusion_squared(model_t),
            y.carry,
            pending,
        )

    def _has_carry(self, x: Array) -> bool:
        shapes = jax.eval_shape(
            lambda x: self.estimator.carry(x, x, x, 0.0, 1.0, 0.0), x
        )
        return shapes is not None

    def contr(self, t0, t1, **kwargs):
        return jnp.asarray(t0), t1 - t0, self.brownian.evaluate(t0, t1, **kwargs)

    def prod(self, vf: _Evaluation, control) -> SuperpositionState:
        tau0, dtau, dw = control
        # The term refuses solvers other than Euler: their later stages evaluate it
        # inside the step, away from where the control starts.
        if self.euler_only:
            dw = error_if(dw, vf.tau != tau0, _NOT_EULER)
        f, g2 = vf.f, vf.g2
        h = g2 * dtau
        noise = jnp.sqrt(g2) * dw

        def one(x, log_q, scores, noise):
            inputs = OperatorInputs(vf.t, x, scores, log_q, noise, h, self.family)
            kappa, correction = self.operator.mix(inputs)
            dx = (-f * x + g2 * weighted_sum(kappa, scores)) * dtau + noise
            dlog_q = jax.vmap(
                lambda s: self.estimator.increment(x, dx, s, f, g2, dtau)
            )(scores)
            carry = jax.vmap(lambda s: self.estimator.carry(x, dx, s, f, g2, dtau))(
                scores
            )
            return dx, dlog_q + correction, carry

        dx, dlog_q, carry = jax.vmap(one)(vf.x, vf.log_q, vf.scores, noise)
        # `vf.log_q` already holds the previous step's correction; Euler adds the
        # returned state to the old one, so the carry is returned as a change.
        dlog_q = dlog_q + vf.pending
        if carry is not None:
            carry = jax.tree.map(jnp.subtract, carry, vf.carry)
        return SuperpositionState(dx, dlog_q, carry)


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
    t_max: float
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
