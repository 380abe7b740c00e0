"""SuperDiff AND (Skreta et al. 2025, Prop. 6)."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._density import ItoEstimator, KernelRatioEstimator
from .._util import ensure
from .base import AbstractOperator, OperatorInputs


def _rtol(value) -> Array:
    return ensure(value, lambda r: r >= 0, "`rtol` must be non-negative; got {got}.")


def _max_weight(value) -> Array | None:
    if value is None:
        return None
    return ensure(
        value,
        lambda w: w >= 1,
        "`max_weight` must be at least 1 (uniform weights must be allowed); got {got}.",
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

    # Arrays, not static floats: a sweep over a tolerance compiles once, and
    # `jax.vmap` over it works. Checked now where known, at run time where traced.
    rtol: Float[Array, ""] = eqx.field(default=1e-10, converter=_rtol)
    max_weight: Float[Array, ""] | None = eqx.field(default=None, converter=_max_weight)
    curvature_correction: bool = eqx.field(static=True, default=False)
    needs_density: ClassVar[bool] = True

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
        if estimator is None:
            return
        if self.curvature_correction and not estimator.ito_increment:
            raise ValueError(
                "`And(curvature_correction=True)` corrects the Itô estimator's "
                "increments, so it needs an estimator whose increment is Itô's "
                f"formula, such as `ItoEstimator()`; got `{estimator!r}`."
            )
        if estimator.defers_correction:
            raise ValueError(
                "`And` equalises each step's increments across the models, so it "
                "needs an estimator whose increment is final within the step; "
                f"`{estimator!r}` corrects each step at the next one (differently "
                "for each model), which AND cannot equalise. Use "
                "`KernelRatioEstimator(curvature_correction=False)` (the default) or "
                "`ItoEstimator()`."
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


def _difference_eigensystem(scores: Array, rtol: Float[ArrayLike, ""]):
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
    rtol: Float[ArrayLike, ""] = 1e-10,
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
    scores: Float[Array, "M *d"], rtol: Float[ArrayLike, ""] = 1e-10
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

    $\\kappa_2 = 1 - \\kappa_1$. Where $s_1 = s_2$ (or $h = 0$) every weight moves
    $x$ alike and the weights are uniform, as in `and_weights`, the general solve.
    """
    s1, s2 = scores[0].reshape(-1), scores[1].reshape(-1)
    diff = s1 - s2
    num = 0.5 * h * (s1 @ s1 - s2 @ s2) - (h * s2 + noise.reshape(-1)) @ diff
    denom = h * diff @ diff
    kappa1 = jnp.where(denom > 0, num / jnp.where(denom > 0, denom, 1.0), 0.5)
    return jnp.stack([kappa1, 1 - kappa1])
