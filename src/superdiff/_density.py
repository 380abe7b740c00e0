"""Log-densities along the probability-flow ODE (Chen et al. 2018; Song et al. 2021,
App. D.2; Skreta et al. 2025, Prop. 5).

Along $dx/d\\tau = u_\\tau(x) = -f_t x + \\tfrac{g_t^2}{2} s_t(x)$, the model's own
probability-flow field, $\\frac{d}{d\\tau}\\log q_{t}(x_\\tau) = -\\nabla\\cdot u =
d f_t - \\tfrac{g_t^2}{2}\\nabla\\cdot s_t$. Unlike the Itô estimator this needs the
divergence of the network: exactly ($d$ JVPs) or by Hutchinson's estimator.
"""

import abc

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._family import ScoreFn, check_family, score_family
from ._sde import AbstractSDE
from ._terms import _Clock, ode_settings


class AbstractDivergence(eqx.Module):
    """How $\\nabla\\cdot s$ is computed, per example."""

    @abc.abstractmethod
    def __call__(
        self, fn, x: Float[Array, "*d"], probes: Float[Array, "p *d"] | None
    ) -> tuple[Float[Array, "*d"], Float[Array, ""]]:
        """`(fn(x), ∇·fn(x))`."""

    def probes(self, shape: tuple[int, ...], *, key: PRNGKeyArray) -> Array | None:
        """Random probes for a batch of examples of `shape`, drawn once per solve
        (one fixed probe per example keeps the ODE smooth for adaptive solvers)."""
        return None


class ExactDivergence(AbstractDivergence):
    """The exact trace of the Jacobian, by one JVP per dimension."""

    def __call__(self, fn, x, probes):
        flat = x.reshape(-1)
        flat_fn = lambda v: fn(v.reshape(x.shape)).reshape(-1)
        value, jvp = jax.linearize(flat_fn, flat)
        diag = jax.vmap(lambda e: jvp(e) @ e)(jnp.eye(flat.size, dtype=x.dtype))
        return value.reshape(x.shape), jnp.sum(diag)


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

    def probes(self, shape, *, key):
        full = (shape[0], self.num_probes, *shape[1:])
        if self.distribution == "gaussian":
            return jax.random.normal(key, full)
        return jax.random.rademacher(key, full).astype(float)

    def __call__(self, fn, x, probes):
        assert probes is not None
        value, jvp = jax.linearize(fn, x)
        quad = jax.vmap(lambda e: jnp.sum(jvp(e) * e))(probes)
        return value, jnp.mean(quad)


class _FlowState(eqx.Module):
    x: Array
    log_q: Array
    probes: Array | None


class ProbabilityFlowDensity(eqx.Module):
    """Vector field of the probability-flow ODE augmented with $\\log q$, on a batch,
    in reverse time $\\tau$: `(x, log_q) -> (u, -∇·u)`. Use with `diffrax.ODETerm`."""

    clock: _Clock
    score_fn: ScoreFn
    divergence: AbstractDivergence

    def __call__(self, tau, y: _FlowState, args) -> _FlowState:
        t = self.clock.t(tau)
        sde = self.clock.sde
        f, g2 = sde.drift_coef(t), sde.diffusion_squared(t)

        def one(x, probes):
            score, div = self.divergence(lambda v: self.score_fn(t, v), x, probes)
            u = -f * x + 0.5 * g2 * score
            return u, x.size * f - 0.5 * g2 * div

        u, dlog_q = jax.vmap(one)(y.x, y.probes)
        probes = None if y.probes is None else jnp.zeros_like(y.probes)
        return _FlowState(u, dlog_q, probes)


def _flow_solve(
    score,
    sde,
    divergence,
    solver,
    controller,
    x,
    log_q,
    key,
    tau0,
    tau1,
    t_max,
    num_steps,
    max_steps,
):
    probes = divergence.probes(x.shape, key=key)
    term = dfx.ODETerm(ProbabilityFlowDensity(_Clock(sde, t_max), score, divergence))
    sol = dfx.diffeqsolve(
        term,
        solver,
        t0=tau0,
        t1=tau1,
        dt0=(tau1 - tau0) / num_steps if num_steps is not None else None,
        y0=_FlowState(x, log_q, probes),
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=max_steps if num_steps is None else num_steps + 1,
    )
    assert sol.ys is not None
    return sol.ys.x[-1], sol.ys.log_q[-1]


_flow_solve_jit = eqx.filter_jit(_flow_solve)


def log_prob_ode(
    score: ScoreFn,
    sde: AbstractSDE,
    x: Float[Array, "n *d"],
    *,
    divergence: AbstractDivergence | None = None,
    key: PRNGKeyArray | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> tuple[Float[Array, " n"], Float[Array, "n *d"]]:
    """The model's $\\log q_{t_{min}}(x)$ for data `x` by the probability-flow ODE:
    integrate from $t_{min}$ up to $t_{max}$ and add the prior's log-density
    (Song et al. 2021, App. D.2).

    **Returns:** the log-densities `(n,)` and the latents at $t_{max}$.
    """
    t_min, t_max, solver, controller = ode_settings(
        sde, t_min, t_max, solver, num_steps, stepsize_controller
    )
    divergence = ExactDivergence() if divergence is None else divergence
    x = jnp.asarray(x)
    check_family(score_family(score), t_min, x[0])
    key = jax.random.key(0) if key is None else key
    # Data to noise: τ runs backwards, from t_max - t_min to 0 (fine for ODE solvers).
    z, delta = _flow_solve_jit(
        score, sde, divergence, solver, controller, x, jnp.zeros(x.shape[0]), key,
        t_max - t_min, 0.0, t_max, num_steps, max_steps,
    )  # fmt: skip
    # delta = log q_{t_max}(z) - log q_{t_min}(x) along the flow.
    return jax.vmap(sde.prior_log_prob)(z) - delta, z


def sample_ode_with_density(
    score: ScoreFn,
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"],
    *,
    divergence: AbstractDivergence | None = None,
    key: PRNGKeyArray | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> tuple[Float[Array, "n *d"], Float[Array, " n"]]:
    """Sample with the probability-flow ODE from noise `x_init` and track
    $\\log q_t$ along it, starting from the prior's log-density (Skreta et al. 2025,
    Prop. 5). **Returns:** the samples and their $\\log q_{t_{min}}$."""
    t_min, t_max, solver, controller = ode_settings(
        sde, t_min, t_max, solver, num_steps, stepsize_controller
    )
    divergence = ExactDivergence() if divergence is None else divergence
    x_init = jnp.asarray(x_init)
    check_family(score_family(score), t_max, x_init[0])
    key = jax.random.key(0) if key is None else key
    log_q = jax.vmap(sde.prior_log_prob)(x_init)
    return _flow_solve_jit(
        score, sde, divergence, solver, controller, x_init, log_q, key,
        0.0, t_max - t_min, t_max, num_steps, max_steps,
    )  # fmt: skip
