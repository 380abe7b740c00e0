"""Analytic Gaussian mixtures: exact $\\log q_t$ and score under any schedule.

A mixture $p_0 = \\sum_k \\pi_k\\,\\mathcal N(\\mu_k, \\Sigma_k)$ stays a mixture under
every Gaussian path: $q_t = \\sum_k \\pi_k\\,\\mathcal N(\\alpha_t\\mu_k,
\\alpha_t^2\\Sigma_k + \\sigma_t^2 I)$. That makes it the oracle for every sampler and
density estimator in this library, and for users' own.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._schedule import AbstractSDE


class GaussianMixture(eqx.Module):
    """A Gaussian mixture in `d` dimensions, diffused by `sde`.

    **Arguments:**

    - `means`: `(K, d)` component means.
    - `covariances`: `(K, d, d)` full covariances, `(K, d)` diagonal variances, or
        `(K,)` isotropic variances.
    - `sde`: the schedule that noises it.
    - `weights`: `(K,)` mixture weights (normalised here); uniform by default.

    Per-example methods take `(t, x)`; `t = 0` is the data distribution itself.
    Isotropic or diagonal covariances are kept as variances and evaluated
    elementwise, in $O(Kd)$ per example instead of a $d\\times d$ Cholesky factor
    per component, so that MNIST-sized oracles ($d = 784$) are cheap.
    """

    means: Float[Array, "K d"]
    covariances: Float[Array, "K d d"]
    log_weights: Float[Array, " K"]
    sde: AbstractSDE
    variances: Float[Array, "K d"] | None

    def __init__(
        self,
        means: Float[ArrayLike, "K d"],
        covariances: Float[ArrayLike, "K d d"]
        | Float[ArrayLike, "K d"]
        | Float[ArrayLike, " K"],
        sde: AbstractSDE,
        weights: Float[ArrayLike, " K"] | None = None,
    ):
        means = jnp.asarray(means, dtype=float)
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape (K, d); got {means.shape}.")
        num, dim = means.shape
        cov = jnp.asarray(covariances, dtype=float)
        variances = None
        if cov.shape == (num,):
            variances = jnp.broadcast_to(cov[:, None], (num, dim))
            cov = cov[:, None, None] * jnp.eye(dim)
        elif cov.shape == (num, dim):
            variances = cov
            cov = jax.vmap(jnp.diag)(cov)
        elif cov.shape != (num, dim, dim):
            raise ValueError(
                f"`covariances` must have shape ({num},), ({num}, {dim}) or "
                f"({num}, {dim}, {dim}) for {num} components in {dim} dimensions; "
                f"got {cov.shape}."
            )
        if weights is None:
            weights = jnp.full((num,), 1.0 / num)
        weights = jnp.asarray(weights, dtype=float)
        if weights.shape != (num,):
            raise ValueError(
                f"`weights` must have shape ({num},); got {weights.shape}."
            )
        _check_mixture(means, cov, weights)
        self.means = means
        self.covariances = cov
        self.variances = variances
        self.log_weights = jnp.log(weights) - jnp.log(jnp.sum(weights))
        self.sde = sde

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def marginal_params(
        self, t: Float[ArrayLike, ""]
    ) -> tuple[Float[Array, "K d"], Float[Array, "K d d"]]:
        """Component means and covariances of $q_t$."""
        alpha, sigma = self._alpha_sigma(t)
        means = alpha * self.means
        covs = alpha**2 * self.covariances + sigma**2 * jnp.eye(self.dim)
        return means, covs

    def _alpha_sigma(self, t) -> tuple[Array, Array]:
        t = jnp.asarray(t, dtype=float)
        # At t = 0 the path is the data itself: α = 1, σ = 0, whatever the schedule.
        alpha = jnp.where(t > 0, self.sde.alpha(t), 1.0)
        sigma = jnp.where(t > 0, self.sde.sigma(jnp.where(t > 0, t, 1.0)), 0.0)
        return alpha, sigma

    def _marginal_variances(self, t) -> tuple[Array, Array]:
        """Component means and variances of $q_t$, `(K, d)` each (diagonal case)."""
        assert self.variances is not None
        alpha, sigma = self._alpha_sigma(t)
        return alpha * self.means, alpha**2 * self.variances + sigma**2

    def component_log_probs(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"]
    ) -> Float[Array, " K"]:
        """$\\log \\pi_k + \\log\\mathcal N(x; \\alpha_t\\mu_k, \\alpha_t^2\\Sigma_k +
        \\sigma_t^2 I)$ for every component."""
        self._check_x(x)
        if self.variances is not None:
            means, variances = self._marginal_variances(t)
            return self.log_weights - 0.5 * jnp.sum(
                (x - means) ** 2 / variances + jnp.log(2 * math.pi * variances),
                axis=1,
            )
        means, covs = self.marginal_params(t)

        def one(mean, cov):
            chol = jnp.linalg.cholesky(cov)
            z = jax.scipy.linalg.solve_triangular(chol, x - mean, lower=True)
            half_logdet = jnp.sum(jnp.log(jnp.diag(chol)))
            return -0.5 * z @ z - half_logdet - 0.5 * self.dim * math.log(2 * math.pi)

        return self.log_weights + jax.vmap(one)(means, covs)

    def log_prob(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"]
    ) -> Float[Array, ""]:
        """Exact $\\log q_t(x)$."""
        return jax.nn.logsumexp(self.component_log_probs(t, x))

    def score(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"]
    ) -> Float[Array, " d"]:
        """Exact $\\nabla_x \\log q_t(x)$, in closed form: the responsibility-weighted
        component scores $-\\Sigma_k(t)^{-1}(x - \\alpha_t\\mu_k)$."""
        self._check_x(x)
        resp = jax.nn.softmax(self.component_log_probs(t, x))
        if self.variances is not None:
            means, variances = self._marginal_variances(t)
            return resp @ (-(x - means) / variances)
        means, covs = self.marginal_params(t)
        comp = jax.vmap(lambda m, c: -jnp.linalg.solve(c, x - m))(means, covs)
        return resp @ comp

    def sample(
        self, num: int, t: Float[ArrayLike, ""] = 0.0, *, key: PRNGKeyArray
    ) -> Float[Array, "n d"]:
        """Draw `num` exact samples of $q_t$."""
        return self.sample_with_labels(num, t, key=key)[0]

    def sample_with_labels(
        self, num: int, t: Float[ArrayLike, ""] = 0.0, *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n d"], Array]:
        """Draw `num` exact samples of $q_t$ and the component each came from."""
        comp_key, noise_key = jax.random.split(key)
        labels = jax.random.categorical(comp_key, self.log_weights, shape=(num,))
        if self.variances is not None:
            means, variances = self._marginal_variances(t)
            noise = jax.random.normal(noise_key, (num, self.dim))
            return means[labels] + jnp.sqrt(variances[labels]) * noise, labels
        means, covs = self.marginal_params(t)
        chols = jnp.linalg.cholesky(covs)
        noise = jax.random.normal(noise_key, (num, self.dim))
        x = means[labels] + jnp.einsum("nij,nj->ni", chols[labels], noise)
        return x, labels

    def component(self, k: int) -> "GaussianMixture":
        """The `k`-th component alone, as a one-component mixture."""
        covariances = self.covariances if self.variances is None else self.variances
        return GaussianMixture(self.means[k : k + 1], covariances[k : k + 1], self.sde)

    def _check_x(self, x: Array) -> None:
        if jnp.shape(x) != (self.dim,):
            raise ValueError(
                f"Expected one example of shape ({self.dim},) (vmap for batches); "
                f"got shape {jnp.shape(x)}."
            )


def _check_mixture(means: Array, covariances: Array, weights: Array) -> None:
    """Refuse, naming the component, what has no density: non-finite means, a
    covariance that is not symmetric positive definite, negative or non-finite
    weights, weights summing to zero. (Skipped when the values are traced.)"""
    try:
        mu, cov, w = (np.asarray(a) for a in (means, covariances, weights))
    except jax.errors.ConcretizationTypeError:
        return
    if not np.all(np.isfinite(mu)):
        raise ValueError("`means` must be finite; got NaN or inf.")
    for k, c in enumerate(cov):
        if not (np.all(np.isfinite(c)) and np.allclose(c, c.T)):
            raise ValueError(
                f"Covariance {k} must be finite and symmetric; got {c.tolist()}."
            )
        smallest = float(np.linalg.eigvalsh(c)[0])
        if not smallest > 0:
            raise ValueError(
                f"Covariance {k} must be positive definite (variances > 0); its "
                f"smallest eigenvalue is {smallest}."
            )
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError(
            f"`weights` must be non-negative, finite and not all zero; got {w.tolist()}."
        )
