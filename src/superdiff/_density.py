"""Log-densities along the probability-flow ODE (Chen et al. 2018; Song et al. 2021,
App. D.2; Skreta et al. 2025, Prop. 5).

Along $dx/d\\tau = u_\\tau(x) = -f_t x + \\tfrac{g_t^2}{2} s_t(x)$, the model's own
probability-flow field, $\\frac{d}{d\\tau}\\log q_{t}(x_\\tau) = -\\nabla\\cdot u =
d f_t - \\tfrac{g_t^2}{2}\\nabla\\cdot s_t$. Unlike the Itô estimator this needs the
divergence of the network: exactly ($d$ JVPs) or by Hutchinson's estimator.
"""

import abc
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._family import ScoreFn, check_family, score_family
from ._sde import AbstractSDE
from ._terms import _Clock, ode_settings, ode_solve_kwargs


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

    def probes(self, shape: tuple[int, ...], *, key: PRNGKeyArray) -> Array | None:
        """Random probes for a batch of examples of `shape`, drawn once per solve
        (one fixed probe per example keeps the ODE smooth for adaptive solvers)."""
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

    def probes(self, shape, *, key):
        full = (shape[0], self.num_probes, *shape[1:])
        if self.distribution == "gaussian":
            return jax.random.normal(key, full)
        return jax.random.rademacher(key, full).astype(float)

    def trace(self, jvp, x, probes):
        assert probes is not None
        quad = jax.vmap(lambda e: jnp.sum(jvp(e) * e))(probes)
        return jnp.mean(quad)


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
        y0=_FlowState(x, log_q, probes),
        **ode_solve_kwargs(tau0, tau1, num_steps, controller, max_steps),
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


# ------------------------------------------------------------------- bits/dim


def bits_per_dim_offset(data_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """$\\log_2(256 / (b - a))$: what bits/dim gain from the scaling of 8-bit data to
    `data_range` $= (a, b)$. 7 for $[-1, 1]$, 8 for $[0, 1]$; see `bits_per_dim`."""
    low, high = (float(v) for v in data_range)
    if not high > low:
        raise ValueError(
            f"`data_range` must be (low, high) with low < high; got {data_range}."
        )
    return math.log2(256.0 / (high - low))


def dequantize(
    images: Int[ArrayLike, "n *d"],
    *,
    key: PRNGKeyArray,
    num_draws: int = 1,
    data_range: tuple[float, float] = (-1.0, 1.0),
) -> Float[Array, "k n *d"]:
    """Uniform dequantisation of 8-bit data, scaled to `data_range` $= (a, b)$:
    $z = a + (b - a)(x + u)/256$, $u \\sim U[0, 1)^d$, `num_draws` independent
    draws of $u$ (as score_sde's `likelihood.py` and evaluation loop do, with
    $(a, b) = (-1, 1)$ for centred data)."""
    x = _check_images(images)
    _check_positive_int(num_draws, "num_draws")
    low, high = (float(v) for v in data_range)
    bits_per_dim_offset(data_range)  # checks the range
    u = jax.random.uniform(key, (num_draws, *x.shape))
    return low + (high - low) * (x.astype(u.dtype) + u) / 256.0


class BitsPerDim(eqx.Module):
    """What `bits_per_dim` returns.

    - `bpd`: bits/dim of each image, the mean over its dequantisation draws, `(n,)`.
    - `draws`: bits/dim of each draw, `(k, n)`.
    - `points`: the dequantised, scaled inputs the model was evaluated at,
        `(k, n, *d)`.
    """

    bpd: Float[Array, " n"]
    draws: Float[Array, "k n"]
    points: Float[Array, "k n *d"]


def bits_per_dim(
    score: ScoreFn,
    sde: AbstractSDE,
    images: Int[ArrayLike, "n *d"],
    *,
    key: PRNGKeyArray,
    num_dequant: int = 1,
    data_range: tuple[float, float] = (-1.0, 1.0),
    divergence: AbstractDivergence | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> BitsPerDim:
    """Bits/dim of 8-bit images under the model, by the probability-flow ODE with
    uniform dequantisation (Song et al. 2021, App. D.2; Theis et al. 2016).

    **Derivation.** Integer pixels $x \\in \\{0, \\dots, 255\\}^d$ are dequantised
    to $y = x + u$, $u \\sim U[0, 1)^d$, and scaled to $z = a + (b - a)\\,y/256$,
    on which the model's density $p(z)$ is defined (`log_prob_ode` at `t_min`). On
    the pixel scale $p_Y(y) = p(z)\\,((b - a)/256)^d$, and by Jensen's inequality
    the discrete probability of the cell $x + [0, 1)^d$ satisfies
    $-\\log_2 P(x) \\le \\mathbb E_u[-\\log_2 p_Y(x + u)]$, so

    $$\\text{bpd} = \\frac{-\\log p(z)}{d\\ln 2} + \\log_2\\frac{256}{b - a}.$$

    The constant is $\\log_2 128 = 7$ for data in $[-1, 1]$ (the default) and
    $\\log_2 256 = 8$ for data in $[0, 1]$: score_sde's `offset = 7 -
    inverse_scaler(-1)`. (MATH.md §4's "+ 8" is the $[0, 1]$ value.) Each of the
    `num_dequant` draws of $u$ gives one estimate; `bpd` is their mean, an upper
    bound on the discrete negative log-likelihood in expectation.

    **Arguments:** as `log_prob_ode`, and

    - `images`: integers in $[0, 255]$, a batch `(n, *d)` (e.g. `uint8`).
    - `key`: for the dequantisation noise and any Hutchinson probes.
    - `num_dequant`: dequantisation draws per image.
    - `data_range`: $(a, b)$, the range the model's data was scaled to.

    **Returns:** a `BitsPerDim` with the per-image mean, the per-draw values and
    the dequantised points.
    """
    images = _check_images(images)
    _check_positive_int(num_dequant, "num_dequant")
    offset = bits_per_dim_offset(data_range)
    dequant_key, probe_key = jax.random.split(key)
    points = dequantize(
        images, key=dequant_key, num_draws=num_dequant, data_range=data_range
    )
    flat = points.reshape(-1, *images.shape[1:])
    log_p, _ = log_prob_ode(
        score, sde, flat, divergence=divergence, key=probe_key, solver=solver,
        num_steps=num_steps, stepsize_controller=stepsize_controller, t_min=t_min,
        t_max=t_max, max_steps=max_steps,
    )  # fmt: skip
    dim = math.prod(images.shape[1:])
    draws = (-log_p / (dim * math.log(2)) + offset).reshape(num_dequant, -1)
    return BitsPerDim(jnp.mean(draws, axis=0), draws, points)


def _check_images(images) -> Array:
    values = np.asarray(images)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(
            "Expected 8-bit images as integers in [0, 255] (e.g. uint8); got dtype "
            f"{values.dtype}. Pass the raw pixel values, not data already scaled."
        )
    if values.ndim < 2:
        raise ValueError(
            f"Expected a batch of images of shape (n, *d); got shape {values.shape}."
        )
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(
            "Expected pixel values in [0, 255]; got values in "
            f"[{values.min()}, {values.max()}]."
        )
    return jnp.asarray(values)


def _check_positive_int(value, name: str) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
