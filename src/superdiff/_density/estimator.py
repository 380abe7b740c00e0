"""Density estimators: the change of each model's $\\log q_t$ over one realised
reverse step (Skreta et al. 2025, Theorem 1 and App. D; `docs/math.md` §3)."""

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._util import inner, require_declared


class AbstractDensityEstimator(eqx.Module):
    """The change of one model's $\\log q_t$ over one realised reverse step.

    `increment` is the one method a new estimator must write. An estimator whose
    increment is completed by the score at the step's end (which the sampler
    computes anyway, for the next step) also gives `carry` and `correction`: the
    term keeps `carry` of each step in its state and adds `correction(carry,
    s(y))` once the next score is known (and the sampler, after the last step).
    A carry of zeros (every leaf) must give a zero correction: the first step
    starts from one.

    Every concrete estimator declares `ito_increment: ClassVar[bool]`: whether its
    increment is Itô's formula on the realised step, the form that AND's curvature
    correction corrects. Whether it defers a correction to the next step
    (`defers_correction`) follows from `carry`.
    """

    ito_increment: eqx.AbstractClassVar[bool]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        require_declared(
            cls,
            "ito_increment",
            "True if its increment is Itô's formula on the realised step (as "
            "`ItoEstimator`'s), False otherwise.",
        )

    @property
    def defers_correction(self) -> bool:
        """Whether a step's increment is completed only at the next step (`carry`
        is not `None`): then AND cannot equalise the increments within a step."""
        x = jnp.zeros((1,))
        return jax.eval_shape(lambda: self.carry(x, x, x, 0.0, 1.0, 0.0)) is not None

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

    def carry(
        self,
        x: Float[Array, "*d"],
        dx: Float[Array, "*d"],
        score: Float[Array, "*d"],
        f: Float[ArrayLike, ""],
        g2: Float[ArrayLike, ""],
        dtau: Float[ArrayLike, ""],
    ) -> PyTree[Array] | None:
        """What `correction` needs of this step; `None` (the default) for
        estimators that need no correction."""
        return None

    def correction(self, carry: Any, score: Float[Array, "*d"]) -> Float[Array, ""]:
        """The change of the previous step's increment, given its `carry` and the
        score $s(t', y)$ at its end."""
        return jnp.zeros((), score.dtype)


class ItoEstimator(AbstractDensityEstimator):
    """The Itô density estimator in its Euler–Maruyama form (Skreta et al. 2025,
    Theorem 1 and Eq. 90; `docs/math.md` (3.3)):

    $$\\Delta\\log q \\approx d f\\,d\\tau - \\tfrac{g^2}{2}\\lVert s(x)\\rVert^2 d\\tau
    + \\langle dx + f x\\,d\\tau, s(x)\\rangle.$$

    No divergence, no extra network call: only the score the sampler already has.
    """

    ito_increment: ClassVar[bool] = True

    def increment(self, x, dx, score, f, g2, dtau):
        return jnp.asarray(
            x.size * f * dtau
            - 0.5 * g2 * inner(score, score) * dtau
            + inner(dx + f * x * dtau, score)
        )


class KernelRatioEstimator(AbstractDensityEstimator):
    """The discrete kernel-ratio estimator (Skreta et al. 2025, App. D, Eq. 89;
    `docs/math.md` (3.4), (3.5)):

    $$\\Delta\\log q \\approx \\log\\mathcal N(y\\mid x + u\\,d\\tau, g^2 d\\tau I)
    - \\log\\mathcal N(x\\mid y + f y\\,d\\tau, g^2 d\\tau I),\\quad
    u = -f x + g^2 s(x),\\ y = x + dx.$$

    Its first-order expansion is the Itô formula, but it keeps $\\lVert dx\\rVert^2$
    as realised instead of replacing it by its mean, and is several times more
    accurate at equal steps (`docs/math.md` §3; `docs/solvers.md` has the measurements).
    Written as $\\langle a - b, a + b\\rangle / (2g^2 d\\tau)$ with
    $a - b = (f\\,dx + g^2 s)\\,d\\tau$ so that nothing of size
    $g^2 d\\tau\\, d$ is cancelled in floating point.

    **Curvature correction** (`curvature_correction=True`, the default;
    `docs/math.md` (3.8), (3.9)). The ratio's mean error in one step of size $h = g^2
    d\\tau$ is $\\tfrac14\\lVert d\\log\\Sigma_t\\rVert_F^2 = \\tfrac{h^2}{4}
    \\lVert \\tfrac{2f}{g^2} I - \\nabla s\\rVert_F^2$ (for a locally Gaussian
    $q_t$ of covariance $\\Sigma_t$): first order in the step overall, and $d$
    times larger in $d$ dimensions. It is estimated without a Jacobian from the
    score at the step's end, $s' = s(t - d\\tau, x + dx)$, which the next step
    computes anyway, and subtracted:

    $$\\Delta\\log q \\mathrel{-}= \\tfrac h4\\,\\big\\lVert \\tfrac{2f}{g^2}dx + s - s'
    \\big\\rVert^2.$$

    The error left is second order in the step (measured in
    `benchmarks/density_accuracy.py`; `docs/density.md` has the table).
    """

    curvature_correction: bool = eqx.field(static=True, default=True)
    ito_increment: ClassVar[bool] = False

    def increment(self, x, dx, score, f, g2, dtau):
        y = x + dx
        a_minus_b = f * dx + g2 * score
        a_plus_b = 2 * dx + (f * (x + y) - g2 * score) * dtau
        return inner(a_minus_b, a_plus_b) / (2 * g2)

    def carry(self, x, dx, score, f, g2, dtau):
        if not self.curvature_correction:
            return None
        gap = jnp.asarray(2 * f / g2 * dx + score)
        return _Curvature(gap, jnp.asarray(g2 * dtau, x.dtype))

    def correction(self, carry, score):
        if carry is None:
            return jnp.zeros((), score.dtype)
        gap = carry.gap - score
        return -0.25 * carry.h * inner(gap, gap)


class _Curvature(eqx.Module):
    """What the kernel ratio's curvature correction keeps of a step:
    $\\tfrac{2f}{g^2}dx + s$ and $h = g^2 d\\tau$."""

    gap: Array
    h: Array
