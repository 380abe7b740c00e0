"""What every operator is: weights $\\kappa$ from what it sees of one step
(`docs/math.md` §5)."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._density import AbstractDensityEstimator, KernelRatioEstimator
from .._model import AbstractScoreFamily, ScoreFn
from .._util import ensure, require_declared


def per_model(value, name: str, ok, message: str) -> Array | None:
    """An operator's optional per-model parameter (shape `(M,)`), checked by `ok`
    with `ensure` (at once where known, at run time where traced); `None` stays
    `None`. Its length is checked against the model count in `check`."""
    if value is None:
        return None
    if np.ndim(value) != 1:
        raise ValueError(
            f"{name} must be one value per model, shape (M,); got shape "
            f"{np.shape(value)}."
        )
    return ensure(value, ok, message, dtype=float)


class OperatorInputs(eqx.Module):
    r"""What an operator sees of one example at one step.

    - `t`: the model time $t$.
    - `x`: the current point, `(*d)`.
    - `scores`: every model's score $s_i = \nabla\log q^i_t(x)$, `(M, *d)`.
    - `log_q`: the tracked $\log q^i_t(x)$, `(M,)`; `None` off the tracked path.
    - `noise`: this step's noise $g\,dW$, the same that moves $x$; `None` off the
        tracked path.
    - `h`: $g^2\,d\tau$, the step's scale; `None` off the tracked path.
    - `family`: the models, for rules that need more than the scores (AND's
        curvature correction takes JVPs, through `curvature`).
    """

    t: Float[Array, ""]
    x: Float[Array, "*d"]
    scores: Float[Array, "M *d"]
    log_q: Float[Array, " M"] | None = None
    noise: Float[Array, "*d"] | None = None
    h: Float[ArrayLike, ""] | None = None
    family: AbstractScoreFamily | None = None

    @property
    def num_models(self) -> int:
        return self.scores.shape[0]

    def curvature(self, direction: Float[Array, "*d"]) -> Float[Array, " M"]:
        r"""$u^\top\nabla s_i(x)\,u$ for every model, by one JVP of the family."""
        family = self.family
        if family is None:
            raise ValueError("`curvature` needs the models: give `family`.")
        _, tangent = jax.jvp(lambda v: family(self.t, v), (self.x,), (direction,))
        return jnp.sum((tangent * direction).reshape(tangent.shape[0], -1), axis=1)


class AbstractOperator(eqx.Module):
    r"""A superposition rule: weights $\kappa$ with $\sum_i\kappa_i = 1$ for one
    example at one step.

    A new operator is one subclass; `__call__` is the only method it must give.
    The others have defaults that a rule may refine:

    - `mix`: the weights and a correction to each tracked $\Delta\log q^i$ (zero,
        unless the rule changes the step's noise as AND's curvature correction does).
    - `mixed_score`: the score followed on an untracked path, for rules whose
        weights read neither the log-densities nor the step's noise.
    - `check`: raise, before any computation, if the rule cannot weight this many
        models, or not with this density estimator.
    - `default_estimator`: the density estimator used when the caller names none
        (the kernel ratio with its curvature correction, the most accurate).

    Every concrete operator declares `needs_density: ClassVar[bool]`: whether its
    weights read `log_q`, `noise` or `h` (sampling then tracks the densities along
    the realised Euler–Maruyama step) or not (any SDE solver, no tracking). There
    is no default: a class that forgets it is refused when it is defined.
    """

    needs_density: eqx.AbstractClassVar[bool]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        require_declared(
            cls,
            "needs_density",
            "True if its weights read the tracked log-densities or the step's noise "
            "(`log_q`, `noise`, `h`), False if they do not (then any SDE solver "
            "works and nothing is tracked).",
        )

    @abc.abstractmethod
    def __call__(self, inputs: OperatorInputs) -> Float[Array, " M"]:
        """The weights $\\kappa$ of one example at one step, summing to one."""

    def mix(
        self, inputs: OperatorInputs
    ) -> tuple[Float[Array, " M"], Float[Array, " M"]]:
        r"""`(kappa, correction)`: the weights, and what each model's tracked
        $\Delta\log q^i$ gains over the estimator's increment in this step."""
        return self(inputs), jnp.zeros(inputs.num_models, inputs.scores.dtype)

    def mixed_score(self, family: AbstractScoreFamily) -> ScoreFn:
        r"""The score $\sum_i\kappa_i s_i$ to follow on an untracked path (any Diffrax
        SDE solver): a callable `(t, x) -> score` on one example. Only for operators
        with `needs_density = False`."""
        return WeightedScore(family, self)

    def default_estimator(self) -> AbstractDensityEstimator:
        """The density estimator to track `log_q` with when none is named."""
        return KernelRatioEstimator()

    def check(
        self, num_models: int, estimator: AbstractDensityEstimator | None = None
    ) -> None:
        """Raise if this operator cannot weight `num_models` models, or cannot work
        with `estimator` (given when the densities are tracked)."""


def weighted_sum(weights: Array, scores: Array) -> Array:
    r"""$\sum_i w_i s_i$ over the model axis (after the leading batch axes of
    `weights`), as a broadcast and a reduction, which XLA fuses with its
    neighbours; a `tensordot` with M = 2 becomes a separate tiny matrix product per
    example (measurably slower on CPU)."""
    axis = weights.ndim - 1
    trailing = (1,) * (scores.ndim - weights.ndim)
    return jnp.sum(weights.reshape(*weights.shape, *trailing) * scores, axis=axis)


class WeightedScore(eqx.Module):
    r"""$\sum_i\kappa_i s_i$ with an operator's weights at each `(t, x)`: the score an
    untracked path follows (the averaging baseline's, for `Average`)."""

    family: AbstractScoreFamily
    operator: AbstractOperator

    def __call__(self, t, x):
        scores = self.family(t, x)
        return weighted_sum(
            self.operator(OperatorInputs(jnp.asarray(t), x, scores)), scores
        )

    def batched(self, t, x):
        """On a batch, with the family's batched evaluation."""
        scores = self.family.batched(t, x)
        t = jnp.asarray(t)
        kappa = jax.vmap(lambda xi, si: self.operator(OperatorInputs(t, xi, si)))(
            x, scores
        )
        return weighted_sum(kappa, scores)
