r"""Superposition operators: how the M scores are weighted at each step.

An operator is a small value that the sampler applies (in the spirit of Optax's
transformations): per example and per step it maps what it sees of the step (an
`OperatorInputs`: the scores, the tracked log-densities, the step's noise) to weights
$\kappa$ with $\sum_i\kappa_i = 1$; the sampler then moves with
$dx = (-f x + g^2\sum_i\kappa_i s_i)\,d\tau + g\,dW$ (Skreta et al. 2025,
Algorithm 1; `docs/math.md` §5). A new operator is one subclass of
`AbstractOperator`; the terms and samplers do not change.
"""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._estimators import AbstractDensityEstimator, ItoEstimator, KernelRatioEstimator
from ._family import AbstractScoreFamily, ScoreFn


def _float_tuple(values) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in np.ravel(values))


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

    `needs_density` says whether the weights read `log_q`, `noise` or `h`; sampling
    then tracks the densities along the realised Euler–Maruyama step.
    """

    needs_density: ClassVar[bool] = True

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


class Single(AbstractOperator):
    r"""One model alone: $\kappa = e_i$. Off the tracked path only its network runs."""

    index: int = eqx.field(static=True, default=0)
    needs_density: ClassVar[bool] = False

    def __call__(self, inputs):
        return jax.nn.one_hot(self.index, inputs.num_models, dtype=inputs.scores.dtype)

    def mixed_score(self, family):
        return family.member(self.index)

    def check(self, num_models, estimator=None):
        if not 0 <= self.index < num_models:
            raise ValueError(
                f"`Single(index={self.index})` needs 0 <= index < {num_models} "
                f"(the number of models)."
            )


class Average(AbstractOperator):
    r"""Fixed weights (the averaging baseline): $\kappa = w$, uniform by default."""

    weights: tuple[float, ...] | None = eqx.field(
        static=True, default=None, converter=_float_tuple
    )
    needs_density: ClassVar[bool] = False

    def __check_init__(self):
        if self.weights is not None and not np.isclose(sum(self.weights), 1.0):
            raise ValueError(f"`weights` must sum to one; got {self.weights}.")

    def __call__(self, inputs):
        num = inputs.num_models
        if self.weights is None:
            return jnp.full((num,), 1.0 / num, dtype=inputs.scores.dtype)
        return jnp.asarray(self.weights, dtype=inputs.scores.dtype)

    def check(self, num_models, estimator=None):
        if self.weights is not None and len(self.weights) != num_models:
            raise ValueError(
                f"`Average` has {len(self.weights)} weights for {num_models} models."
            )


class Or(AbstractOperator):
    r"""SuperDiff OR (Skreta et al. 2025, Prop. 3; `docs/math.md` §5):
    $\kappa = \mathrm{softmax}(T\log q + \ell)$.

    With `temperature=1` and `bias=log w` this samples exactly the mixture
    $\sum_i w_i q^i$ (given exact scores and log-densities); as $T\to\infty$ each
    example follows its most likely model.

    **Arguments:**

    - `temperature`: $T$, finite and positive.
    - `bias`: $\ell$, one value per model (zero by default); $-\infty$ turns a model
        off, but not every model.
    """

    temperature: float = 1.0
    bias: tuple[float, ...] | None = eqx.field(
        static=True, default=None, converter=_float_tuple
    )

    def __check_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                "`Or` needs a finite, positive temperature T; got "
                f"T={self.temperature}."
            )
        if self.bias is not None and (
            any(math.isnan(b) or b == math.inf for b in self.bias)
            or all(b == -math.inf for b in self.bias)
        ):
            raise ValueError(
                "`Or`'s `bias` must be finite, or -inf to turn a model off (not every "
                f"model); got {self.bias}."
            )

    def __call__(self, inputs):
        if inputs.log_q is None:
            raise ValueError("`Or` weighs by the tracked log-densities: give `log_q`.")
        # Shift before scaling: softmax is shift-invariant, and the largest entry is
        # then exactly 0 for any T. Scaling first loses the logits to rounding once
        # |T log q| is large (T = 1e6 and log q ~ -4e3 give 4e9, whose float32 ulp
        # is 512), and under `jit` XLA fuses T log q - max(T log q) into an FMA
        # whose "zero" is then -168: every exp underflows and softmax is 0/0.
        log_q = inputs.log_q
        logits = self.temperature * (log_q - jnp.max(log_q))
        if self.bias is not None:
            logits = logits + jnp.asarray(self.bias, dtype=logits.dtype)
        return jax.nn.softmax(logits)

    def check(self, num_models, estimator=None):
        if self.bias is not None and len(self.bias) != num_models:
            raise ValueError(
                f"`Or` has {len(self.bias)} bias values for {num_models} models."
            )


class And(AbstractOperator):
    """SuperDiff AND (Skreta et al. 2025, Prop. 6; `docs/math.md` §5.3): weights that
    make every model's log-density change by the same amount in this step.

    Writing the Itô increments as $d\\log q^i = v_i + h (K\\kappa)_i$ with
    $K_{ij} = \\langle s_i, s_j\\rangle$, $v_i = \\langle g\\,dW, s_i\\rangle -
    \\tfrac{h}{2}\\lVert s_i\\rVert^2$ and $h = g^2 d\\tau$ (the linear system of
    Prop. 6 with the common terms cancelled), we solve
    $v + hK\\kappa = \\lambda\\mathbf 1$, $\\mathbf 1^\\top\\kappa = 1$ in the
    coordinates $\\kappa = \\mathbf 1/M + Qz$, $Q$ an orthonormal basis of
    $\\mathbf 1^\\perp$:

    $$h\\,G z = -(Q^\\top v + h\\,\\tilde S\\bar s), \\qquad \\tilde S = Q^\\top S,
    \\quad G = \\tilde S\\tilde S^\\top.$$

    **Degenerate points.** $G$ is the Gram matrix of the score differences, so it is
    singular exactly where some scores coincide (or are affinely dependent). There
    every $\\kappa$ in the null direction moves $x$ identically, and we take the
    pseudo-inverse: eigen-directions of $G$ with eigenvalue at most
    `rtol` times the mean $\\lVert s_i\\rVert^2$ get no correction, so coinciding
    scores give uniform weights — never NaN.

    **Bounding.** Near degenerate points $\\kappa$ can be very large (in the M = 2
    case $\\kappa_1 = \\tfrac12 - \\langle g\\,dW, s_1 - s_2\\rangle /
    (h\\lVert s_1-s_2\\rVert^2)$) while the step $h\\sum\\kappa_i s_i$ stays bounded,
    because the correction only cancels the noise along the score difference. If
    `max_weight` is given, the deviation $\\kappa - \\mathbf 1/M$ is scaled down
    (keeping $\\sum\\kappa = 1$) until every $|\\kappa_i| \\le$ `max_weight`; only
    the equality of the increments is relaxed in that step.

    **Curvature.** Because $\\kappa$ depends on the step's own $dW$, the realised
    step carries no noise along the span of the score differences (projector $P$):
    its diffusion is $g^2(I - P)$, not $g^2 I$. The Itô estimator assumes the
    latter, so each tracked $\\log q^i$ gains a bias
    $\\tfrac12\\int g^2\\,\\mathrm{tr}(P\\nabla s_i)\\,d\\tau$ (measured on two
    Gaussians of variance 0.25: $-5.7$ nats, whatever the step count), and where the
    models' curvatures differ, equal tracked values are not equal densities. With
    `curvature_correction=True` the operator (`mix`) adds the missing
    $-\\tfrac h2\\mathrm{tr}(P\\nabla s_i)$ to each increment, from one JVP of the
    models per direction of $P$ (M − 1 per step, on top of the one evaluation), and
    equalises the corrected increments. Supported with `ItoEstimator`.
    """

    rtol: float = 1e-10
    max_weight: float | None = None
    curvature_correction: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not self.rtol >= 0:
            raise ValueError(f"`rtol` must be non-negative; got {self.rtol}.")
        if self.max_weight is not None and not self.max_weight >= 1:
            raise ValueError(
                f"`max_weight` must be at least 1 (uniform weights must be allowed); "
                f"got {self.max_weight}."
            )

    def __call__(self, inputs):
        return self._bounded(inputs, offsets=None)[0]

    def mix(self, inputs):
        if not self.curvature_correction:
            return super().mix(inputs)
        # tr(P ∇s_i) along the directions where AND cancels the noise.
        directions = and_noise_directions(inputs.scores, self.rtol)
        curvature = jnp.sum(jax.vmap(inputs.curvature)(directions), axis=0)
        assert inputs.h is not None
        missing = -0.5 * jnp.asarray(inputs.h) * curvature
        kappa, shrink = self._bounded(inputs, offsets=missing)
        # Noise left along P: (1 - shrink) of it, so the realised diffusion there is
        # g²(1 - shrink)² = g²(1 - (2 shrink - shrink²)).
        return kappa, (2 * shrink - shrink**2) * missing

    def _bounded(
        self, inputs: OperatorInputs, offsets: Float[Array, " M"] | None
    ) -> tuple[Float[Array, " M"], Float[Array, ""]]:
        """The weights and the factor `c ∈ (0, 1]` by which `max_weight` shrank
        their deviation from uniform (1 when unbounded)."""
        if inputs.noise is None or inputs.h is None:
            raise ValueError("`And` weighs by the step's noise: give `noise` and `h`.")
        scores = inputs.scores
        kappa = and_weights(scores, inputs.noise, inputs.h, self.rtol, offsets)
        shrink = jnp.ones((), kappa.dtype)
        if self.max_weight is not None:
            num = scores.shape[0]
            dev = kappa - 1.0 / num
            room = self.max_weight - 1.0 / num
            shrink = jnp.minimum(1.0, room / jnp.maximum(jnp.max(jnp.abs(dev)), room))
            kappa = 1.0 / num + dev * shrink
        return kappa, shrink

    def default_estimator(self):
        # AND equalises each step's increments across the models. The kernel
        # ratio's curvature correction of a step is known only at the next one and
        # differs between models, so AND could not equalise it: AND tracks with
        # the uncorrected ratio, or with Itô under its own curvature correction,
        # which is written for Itô's increments.
        if self.curvature_correction:
            return ItoEstimator()
        return KernelRatioEstimator(curvature_correction=False)

    def check(self, num_models, estimator=None):
        if num_models < 2:
            raise ValueError(f"`And` needs at least two models; got {num_models}.")
        if (
            self.curvature_correction
            and estimator is not None
            and not isinstance(estimator, ItoEstimator)
        ):
            raise ValueError(
                "`And(curvature_correction=True)` corrects the Itô estimator's "
                "increments, so it needs `estimator=ItoEstimator()`; got "
                f"`{type(estimator).__name__}`."
            )


def _complement_basis(num: int) -> np.ndarray:
    """An orthonormal basis of the complement of the all-ones vector, `(M, M-1)`
    (the Helmert basis)."""
    basis = np.zeros((num, num - 1))
    for k in range(1, num):
        basis[:k, k - 1] = 1.0
        basis[k, k - 1] = -k
        basis[:, k - 1] /= np.sqrt(k * (k + 1))
    return basis


def _difference_eigensystem(scores: Array, rtol: float):
    """The Helmert basis Q, the reduced scores S̃ = QᵀS, and the kept eigenpairs of
    the difference Gram matrix G = S̃S̃ᵀ (dropped ones have zero inverse)."""
    num = scores.shape[0]
    flat = scores.reshape(num, -1)
    basis = jnp.asarray(_complement_basis(num), dtype=flat.dtype)
    reduced = basis.T @ flat  # differences of the scores, (M-1, D)
    eigvals, eigvecs = jnp.linalg.eigh(reduced @ reduced.T)
    scale = jnp.mean(jnp.sum(flat**2, axis=1))
    keep = eigvals > rtol * scale
    inv = jnp.where(keep, 1.0 / jnp.where(keep, eigvals, 1.0), 0.0)
    return flat, basis, reduced, eigvecs, inv


def and_weights(
    scores: Float[Array, "M *d"],
    noise: Float[Array, "*d"],
    h: Float[ArrayLike, ""],
    rtol: float = 1e-10,
    offsets: Float[Array, " M"] | None = None,
) -> Float[Array, " M"]:
    """The AND weights for any number of models (Skreta et al. 2025, Prop. 6); see
    `And` for the system solved and the rule at degenerate points. `offsets` are
    added to each model's increment before equalising (the curvature correction).
    A step of no length ($h = g^2 d\\tau \\le 0$) moves nothing, and gets uniform
    weights."""
    num = scores.shape[0]
    flat, basis, reduced, eigvecs, inv = _difference_eigensystem(scores, rtol)
    h = jnp.asarray(h, flat.dtype)
    moving = h > 0
    safe_h = jnp.where(moving, h, 1.0)
    v = flat @ noise.reshape(-1) - 0.5 * safe_h * jnp.sum(flat**2, axis=1)
    if offsets is not None:
        v = v + offsets
    rhs = -(basis.T @ v / safe_h + reduced @ jnp.mean(flat, axis=0))
    z = jnp.where(moving, eigvecs @ (inv * (eigvecs.T @ rhs)), 0.0)
    return 1.0 / num + basis @ z


def and_noise_directions(
    scores: Float[Array, "M *d"], rtol: float = 1e-10
) -> Float[Array, "M-1 *d"]:
    """An orthonormal basis (rows; zero rows for degenerate directions) of the span
    of the score differences: the directions in which AND's weights cancel the
    step's noise."""
    _, _, reduced, eigvecs, inv = _difference_eigensystem(scores, rtol)
    rows = (jnp.sqrt(inv)[:, None] * eigvecs.T) @ reduced
    return rows.reshape(scores.shape[0] - 1, *scores.shape[1:])


def and_weights_two(
    scores: Float[Array, "2 *d"],
    noise: Float[Array, "*d"],
    h: Float[ArrayLike, ""],
) -> Float[Array, " 2"]:
    """The closed form of AND for two models (Skreta et al. 2025, Prop. 6):

    $$\\kappa_1 = \\frac{\\tfrac h2(\\lVert s_1\\rVert^2 - \\lVert s_2\\rVert^2)
    - \\langle dx_2 + f x\\,d\\tau, s_1 - s_2\\rangle}{h\\lVert s_1 - s_2\\rVert^2},
    \\qquad dx_2 + f x\\,d\\tau = h s_2 + g\\,dW,$$

    $\\kappa_2 = 1 - \\kappa_1$. Undefined where $s_1 = s_2$; `and_weights` is the
    general solve with the degenerate-point rule.
    """
    s1, s2 = scores[0].reshape(-1), scores[1].reshape(-1)
    diff = s1 - s2
    num = 0.5 * h * (s1 @ s1 - s2 @ s2) - (h * s2 + noise.reshape(-1)) @ diff
    kappa1 = num / (h * diff @ diff)
    return jnp.stack([kappa1, 1 - kappa1])
