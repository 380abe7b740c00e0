"""Reverse-time dynamics as Diffrax terms, in forward reverse time $\\tau$.

Everything here is integrated from $\\tau = 0$ (noise, $t = t_{max}$) to
$\\tau = t_{max} - t_{min}$ (data), with $t = t_{max} - \\tau$. Writing the reverse
process in forward time, rather than integrating with `t0 > t1`, is what makes
Diffrax's SDE solvers behave (MATH.md §3).
"""

import abc
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float

from ._family import AbstractScoreFamily
from ._operators import AbstractOperator, And
from ._sde import AbstractSDE


def _inner(a: ArrayLike, b: ArrayLike) -> Array:
    return jnp.sum(jnp.asarray(a) * jnp.asarray(b))


# ------------------------------------------------------------------ estimators


class AbstractDensityEstimator(eqx.Module):
    """The change of one model's $\\log q_t$ over one realised reverse step."""

    @abc.abstractmethod
    def increment(
        self,
        x: Float[Array, "*d"],
        dx: Float[Array, "*d"],
        score: Float[Array, "*d"],
        f: Float[ArrayLike, ""],
        g2: Float[ArrayLike, ""],
        dtau: Float[ArrayLike, ""],
    ) -> Float[Array, ""]:
        """$\\Delta\\log q^i$ for the step from `x` to `x + dx`, with the model's
        score `score` $= s_i(x)$ at the start, $f = f_t$, $g^2 = g_t^2$."""


class ItoEstimator(AbstractDensityEstimator):
    """The Itô density estimator in its Euler–Maruyama form (Skreta et al. 2025,
    Theorem 1 and Eq. 90):

    $$\\Delta\\log q \\approx d f\\,d\\tau - \\tfrac{g^2}{2}\\lVert s(x)\\rVert^2 d\\tau
    + \\langle dx + f x\\,d\\tau, s(x)\\rangle.$$

    No divergence, no extra network call: only the score the sampler already has.
    """

    def increment(self, x, dx, score, f, g2, dtau):
        return jnp.asarray(
            x.size * f * dtau
            - 0.5 * g2 * _inner(score, score) * dtau
            + _inner(dx + f * x * dtau, score)
        )


class KernelRatioEstimator(AbstractDensityEstimator):
    """The discrete kernel-ratio estimator (Skreta et al. 2025, App. D, Eq. 89):

    $$\\Delta\\log q \\approx \\log\\mathcal N(y\\mid x + u\\,d\\tau, g^2 d\\tau I)
    - \\log\\mathcal N(x\\mid y + f y\\,d\\tau, g^2 d\\tau I),\\quad
    u = -f x + g^2 s(x),\\ y = x + dx.$$

    Its first-order expansion is the Itô formula, but it keeps $\\lVert dx\\rVert^2$
    as realised instead of replacing it by its mean, and is several times more
    accurate at equal steps (MATH.md §3, and `docs/solvers.md` for our measurements).
    Written as $\\langle a - b, a + b\\rangle / (2g^2 d\\tau)$ with
    $a - b = (f\\,dx + g^2 s)\\,d\\tau$ so that nothing of size
    $g^2 d\\tau\\, d$ is cancelled in floating point.
    """

    def increment(self, x, dx, score, f, g2, dtau):
        y = x + dx
        a_minus_b = f * dx + g2 * score
        a_plus_b = 2 * dx + (f * (x + y) - g2 * score) * dtau
        return _inner(a_minus_b, a_plus_b) / (2 * g2)


# ------------------------------------------------------------ plain dynamics


class _Clock(eqx.Module):
    """Converts Diffrax's $\\tau$ to the model's $t = t_{max} - \\tau$."""

    sde: AbstractSDE
    t_max: float

    def t(self, tau: Float[ArrayLike, ""]) -> Float[Array, ""]:
        return self.t_max - jnp.asarray(tau)


def _weighted_sum(weights: Array, scores: Array, axis: int = 0) -> Array:
    """$\\sum_i w_i s_i$ over `axis`, written as a broadcast and a reduction, which
    XLA fuses with its neighbours; a `tensordot` with M = 2 becomes a separate tiny
    matrix product per example (measurably slower on CPU)."""
    shape = [1] * scores.ndim
    shape[axis] = -1
    return jnp.sum(jnp.reshape(weights, shape) * scores, axis=axis)


def _batched(score_fn, t, x):
    """A per-example score on a batch; score families know a faster way."""
    if isinstance(score_fn, AbstractScoreFamily | MixedScore):
        return score_fn.batched(t, x)
    return jax.vmap(lambda xi: score_fn(t, xi))(x)


class MixedScore(eqx.Module):
    r"""$\sum_i w_i s_i$ for fixed weights: the score the averaging baseline follows."""

    family: AbstractScoreFamily
    weights: Float[Array, " M"]

    def __call__(self, t, x):
        return _weighted_sum(self.weights, self.family(t, x))

    def batched(self, t, x):
        return _weighted_sum(self.weights, self.family.batched(t, x), axis=1)


class ReverseDrift(eqx.Module):
    """Drift of the reverse-time process (Skreta et al. 2025, Prop. 1) on a batch:

    $$u_\\tau(x) = -f_t x + (\\tfrac{g_t^2}{2} + \\xi_t)\\,\\nabla\\log q_t(x),
    \\qquad \\xi_t = \\tfrac{\\text{noise\\_scale}}{2} g_t^2.$$

    `noise_scale = 1` is the reverse SDE, `0` the probability-flow ODE.
    """

    clock: _Clock
    score_fn: Any
    noise_scale: float

    def __call__(self, tau, x, args):
        t = self.clock.t(tau)
        sde = self.clock.sde
        g2 = sde.diffusion_squared(t)
        coef = 0.5 * g2 * (1 + self.noise_scale)
        return -sde.drift_coef(t) * x + coef * _batched(self.score_fn, t, x)


class _ReverseDiffusion(eqx.Module):
    clock: _Clock
    noise_scale: float

    def __call__(self, tau, x, args):
        t = self.clock.t(tau)
        g = jnp.sqrt(self.noise_scale * self.clock.sde.diffusion_squared(t))
        return lx.DiagonalLinearOperator(jnp.broadcast_to(g, x.shape).astype(x.dtype))


def reverse_sde_terms(
    sde: AbstractSDE,
    score_fn,
    brownian: dfx.AbstractBrownianPath,
    t_max: float | None = None,
    noise_scale: float = 1.0,
) -> dfx.MultiTerm:
    """The reverse SDE on a batch `x` of shape `(n, *d)`, as
    `MultiTerm(ODETerm(drift), ControlTerm(diffusion, brownian))`.

    Its noise $\\sqrt{2\\xi_t}\\,dW$ is additive, so its Itô and Stratonovich
    solutions agree and any Diffrax SDE solver converges to it. `score_fn` is any
    `(t, x) -> score` on one example.
    """
    clock = _Clock(sde, sde.t_max if t_max is None else t_max)
    return dfx.MultiTerm(
        dfx.ODETerm(ReverseDrift(clock, score_fn, noise_scale)),
        dfx.ControlTerm(_ReverseDiffusion(clock, noise_scale), brownian),
    )


def ode_settings(
    sde: AbstractSDE,
    t_min: float | None,
    t_max: float | None,
    solver: dfx.AbstractSolver | None,
    num_steps: int | None,
    stepsize_controller: dfx.AbstractStepSizeController | None,
) -> tuple[float, float, dfx.AbstractSolver, dfx.AbstractStepSizeController]:
    """The checked time range and the defaults shared by every probability-flow
    solve: `Tsit5`, adaptive (`PIDController(rtol=1e-5, atol=1e-5)`) unless
    `num_steps` fixes the steps."""
    t_min, t_max = sde.time_range(t_min, t_max)
    if num_steps is not None and not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"`num_steps` must be a positive integer; got {num_steps!r}.")
    solver = dfx.Tsit5() if solver is None else solver
    if stepsize_controller is None:
        stepsize_controller = (
            dfx.PIDController(rtol=1e-5, atol=1e-5)
            if num_steps is None
            else dfx.ConstantStepSize()
        )
    return t_min, t_max, solver, stepsize_controller


def ode_solve_kwargs(
    tau0: float,
    tau1: float,
    num_steps: int | None,
    stepsize_controller: dfx.AbstractStepSizeController,
    max_steps: int,
) -> dict:
    """The `diffeqsolve` arguments of a probability-flow solve from `tau0` to
    `tau1`: `num_steps` fixed steps, or adaptive steps (at most `max_steps`) when
    it is `None`; only the end point is saved."""
    return dict(
        t0=tau0,
        t1=tau1,
        dt0=None if num_steps is None else (tau1 - tau0) / num_steps,
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=stepsize_controller,
        max_steps=max_steps if num_steps is None else num_steps + 1,
    )


def probability_flow_term(
    sde: AbstractSDE, score_fn, t_max: float | None = None
) -> dfx.ODETerm:
    """The probability-flow ODE $dx/d\\tau = -f_t x + \\tfrac{g_t^2}{2}\\nabla\\log
    q_t(x)$ (Song et al. 2021, Eq. 13) on a batch, in reverse time $\\tau$."""
    clock = _Clock(sde, sde.t_max if t_max is None else t_max)
    return dfx.ODETerm(ReverseDrift(clock, score_fn, 0.0))


# --------------------------------------------------- superposition with tracking


class SuperpositionState(eqx.Module):
    """The augmented state: samples and every model's tracked log-density."""

    x: Float[Array, "n *d"]
    log_q: Float[Array, "n M"]


class _Evaluation(eqx.Module):
    """What the vector field gives the step: the scores at the current point and the
    schedule's coefficients. One network evaluation per model."""

    t: Float[Array, ""]
    x: Float[Array, "n *d"]
    log_q: Float[Array, "n M"]
    scores: Float[Array, "n M *d"]
    f: Float[Array, ""]
    g2: Float[Array, ""]


class SuperpositionTerm(dfx.AbstractTerm):
    """The reverse SDE driven by M superposed models, with every model's
    $\\log q^i$ tracked alongside the samples (Skreta et al. 2025, Algorithm 1).

    The state is a `SuperpositionState` `(x, log_q)` of a batch; the control is
    $(d\\tau, dW)$ from `brownian`. One step from `x`:

    1. the family's scores $s_i(x)$ (one network call per model: `vf`);
    2. weights $\\kappa$ from the operator, given this step's noise $g\\,dW$ (AND
       needs it, Prop. 6);
    3. $dx = (-f x + g^2\\sum_i\\kappa_i s_i)\\,d\\tau + g\\,dW$;
    4. $\\Delta\\log q^i$ from the realised $dx$ by the estimator (Theorem 1).

    Because the weights and the estimate are functions of the realised step, this
    term is exact only under a solver that takes one Euler step with the whole
    control: `diffrax.Euler`. The samplers check that; see `docs/solvers.md`.
    """

    family: AbstractScoreFamily
    operator: AbstractOperator
    estimator: AbstractDensityEstimator
    brownian: dfx.AbstractBrownianPath
    clock: _Clock

    def __init__(
        self,
        sde: AbstractSDE,
        family: AbstractScoreFamily,
        operator: AbstractOperator,
        brownian: dfx.AbstractBrownianPath,
        estimator: AbstractDensityEstimator | None = None,
        t_max: float | None = None,
    ):
        self.family = family
        self.operator = operator
        self.estimator = ItoEstimator() if estimator is None else estimator
        self.brownian = brownian
        self.clock = _Clock(sde, sde.t_max if t_max is None else t_max)

    def vf(self, t, y: SuperpositionState, args) -> _Evaluation:
        model_t = self.clock.t(t)
        sde = self.clock.sde
        scores = self.family.batched(model_t, y.x)
        return _Evaluation(
            model_t,
            y.x,
            y.log_q,
            scores,
            sde.drift_coef(model_t),
            sde.diffusion_squared(model_t),
        )

    def contr(self, t0, t1, **kwargs):
        return t1 - t0, self.brownian.evaluate(t0, t1, **kwargs)

    def prod(self, vf: _Evaluation, control) -> SuperpositionState:
        dtau, dw = control
        f, g2 = vf.f, vf.g2
        h = g2 * dtau
        noise = jnp.sqrt(g2) * dw
        correct = isinstance(self.operator, And) and self.operator.curvature_correction

        def one(x, log_q, scores, noise):
            extra = jnp.zeros(scores.shape[0], scores.dtype)
            if correct:
                assert isinstance(self.operator, And)
                # tr(P ∇s_i) along the directions where AND cancels the noise.
                directions = self.operator.noise_directions(scores)
                curvature = jnp.sum(
                    jax.vmap(lambda u: self._curvature(vf.t, x, u))(directions), axis=0
                )
                missing = -0.5 * h * curvature
                kappa, shrink = self.operator.weights_and_shrink(
                    scores, noise, h, offsets=missing
                )
                # Noise left along P: (1 - shrink) of it, so the realised diffusion
                # there is g²(1 - shrink)² = g²(1 - (2 shrink - shrink²)).
                extra = (2 * shrink - shrink**2) * missing
            else:
                kappa = self.operator(log_q, scores, noise, h)
            mixed = _weighted_sum(kappa, scores)
            dx = (-f * x + g2 * mixed) * dtau + noise
            dlog_q = jax.vmap(
                lambda s: self.estimator.increment(x, dx, s, f, g2, dtau)
            )(scores)
            return dx, dlog_q + extra

        dx, dlog_q = jax.vmap(one)(vf.x, vf.log_q, vf.scores, noise)
        return SuperpositionState(dx, dlog_q)

    def _curvature(self, t, x, direction) -> Float[Array, " M"]:
        """$u^\\top\\nabla s_i(x)\\,u$ for every model, by one JVP of the family."""
        _, tangent = jax.jvp(lambda v: self.family(t, v), (x,), (direction,))
        return jnp.sum((tangent * direction).reshape(tangent.shape[0], -1), axis=1)
