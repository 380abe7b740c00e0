"""M superposed models with every $\\log q^i$ tracked, as one Diffrax term
(`docs/math.md` §3, §5)."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._density import AbstractDensityEstimator
from .._model import AbstractScoreFamily
from .._operator import AbstractOperator, OperatorInputs, weighted_sum
from .._schedule import AbstractSDE
from .._util import error_if


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
    t_max: float | Array
    euler_only: bool = eqx.field(static=True)

    def __init__(
        self,
        sde: AbstractSDE,
        family: AbstractScoreFamily,
        operator: AbstractOperator,
        brownian: dfx.AbstractBrownianPath,
        estimator: AbstractDensityEstimator | None = None,
        t_max: float | Array | None = None,
        euler_only: bool = True,
    ):
        self.family = family
        self.operator = operator
        self.estimator = (
            operator.default_estimator() if estimator is None else estimator
        )
        self.brownian = brownian
        self.sde = sde
        self.t_max = sde.t_max if t_max is None else t_max
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
        if y.carry is None and self.estimator.defers_correction:
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
