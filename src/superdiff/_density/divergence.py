"""Divergences of a function at a point, per example: the trace of its Jacobian,
exactly or by Hutchinson's estimator (`docs/math.md` §4)."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractDivergence(eqx.Module):
    """How $\\nabla\\cdot s$ is computed, per example: from the linearisation of
    the function at the point, as the trace of its Jacobian."""

    def __call__(
        self, fn, x: Float[Array, "*d"], probes: Float[Array, "p *d"] | None
    ) -> tuple[Float[Array, "*d"], Float[Array, ""]]:
        """`(fn(x), ∇·fn(x))`."""
        value, jvp = jax.linearize(fn, x)
        return value, self.trace(jvp, x, probes)

    @abc.abstractmethod
    def trace(
        self, jvp, x: Float[Array, "*d"], probes: Float[Array, "p *d"] | None
    ) -> Float[Array, ""]:
        """$\\mathrm{tr}\\,J$ (or an estimate of it) for the Jacobian-vector product
        `jvp` $v \\mapsto Jv$ of a function at `x`."""

    def probe_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape of the probes for a batch of examples of `shape`, or `None`
        when this divergence needs no random probes (and so no key)."""
        return None

    def probes(self, shape: tuple[int, ...], *, key: PRNGKeyArray) -> Array | None:
        """Random probes for a batch of examples of `shape`, drawn once per solve
        (one fixed probe per example keeps the ODE smooth for adaptive solvers)."""
        return None

    def probes_from_increment(
        self, dv: Float[Array, "n p *d"], dtau: Float[Array, ""]
    ) -> Array | None:
        """Probes made from the increment `dv` of a Brownian path over a step of
        length `dtau`, so that each step of an SDE solve gets fresh, independent
        probes; `None` when this divergence needs none. Its shape is that of
        `probes`."""
        return None


class ExactDivergence(AbstractDivergence):
    """The exact trace of the Jacobian, by one JVP per dimension."""

    def trace(self, jvp, x, probes):
        basis = jnp.eye(x.size, dtype=x.dtype).reshape(x.size, *x.shape)
        diag = jax.vmap(lambda e: jnp.sum(jvp(e) * e))(basis)
        return jnp.sum(diag)


class Hutchinson(AbstractDivergence):
    """Hutchinson's unbiased estimator $\\nabla\\cdot s \\approx \\frac1p\\sum_k
    \\varepsilon_k^\\top J\\varepsilon_k$ with Rademacher or Gaussian probes
    (Hutchinson 1989; Grathwohl et al. 2019), one JVP per probe."""

    num_probes: int = eqx.field(static=True, default=1)
    distribution: str = eqx.field(static=True, default="rademacher")

    def __check_init__(self):
        if self.num_probes < 1:
            raise ValueError(f"`num_probes` must be positive; got {self.num_probes}.")
        if self.distribution not in ("rademacher", "gaussian"):
            raise ValueError(
                "`distribution` must be 'rademacher' or 'gaussian'; got "
                f"{self.distribution!r}."
            )

    def probe_shape(self, shape):
        return (shape[0], self.num_probes, *shape[1:])

    def probes(self, shape, *, key):
        full = self.probe_shape(shape)
        if self.distribution == "gaussian":
            return jax.random.normal(key, full)
        return jax.random.rademacher(key, full).astype(float)

    def probes_from_increment(self, dv, dtau):
        # dv/sqrt(dτ) is standard normal; its signs are Rademacher.
        if self.distribution == "gaussian":
            return dv / jnp.sqrt(dtau)
        return jnp.where(dv >= 0, 1.0, -1.0).astype(dv.dtype)

    def trace(self, jvp, x, probes):
        assert probes is not None
        quad = jax.vmap(lambda e: jnp.sum(jvp(e) * e))(probes)
        return jnp.mean(quad)
