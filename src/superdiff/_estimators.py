"""Density estimators: the change of each model's $\\log q_t$ over one realised
reverse step (Skreta et al. 2025, Theorem 1 and App. D; `docs/math.md` §3)."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._util import inner


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
    Theorem 1 and Eq. 90; `docs/math.md` (3.3)):

    $$\\Delta\\log q \\approx d f\\,d\\tau - \\tfrac{g^2}{2}\\lVert s(x)\\rVert^2 d\\tau
    + \\langle dx + f x\\,d\\tau, s(x)\\rangle.$$

    No divergence, no extra network call: only the score the sampler already has.
    """

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
    """

    def increment(self, x, dx, score, f, g2, dtau):
        y = x + dx
        a_minus_b = f * dx + g2 * score
        a_plus_b = 2 * dx + (f * (x + y) - g2 * score) * dtau
        return inner(a_minus_b, a_plus_b) / (2 * g2)
