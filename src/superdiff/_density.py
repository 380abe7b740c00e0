r"""Log-densities along the probability-flow ODE (Chen et al. 2018; Song et al. 2021,
App. D.2; Skreta et al. 2025, Prop. 5; `docs/math.md` §4).

Along $dx/d\tau = u_\tau(x) = -f_t x + \tfrac{g_t^2}{2} s_t(x)$, the model's own
probability-flow field, $\frac{d}{d\tau}\log q_{t}(x_\tau) = -\nabla\cdot u =
d f_t - \tfrac{g_t^2}{2}\nabla\cdot s_t$. Unlike the Itô estimator this needs the
divergence of the network: exactly ($d$ JVPs) or by Hutchinson's estimator.
"""

import math
from typing_extensions import Unpack

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._divergence import AbstractDivergence, ExactDivergence
from ._family import ScoreFn
from ._sde import AbstractSDE
from ._solve import (
    RESULTS,
    Samples,
    Setup,
    SolveOptions,
    check_key,
    check_options,
    fixed_probes,
    integrate,
    ode_start,
    positive_int,
    prior_log_prob,
)
from ._terms import FlowState, ProbabilityFlow


def _flow(
    score: ScoreFn,
    sde: AbstractSDE,
    x: Array,
    log_q: Array,
    divergence: AbstractDivergence | None,
    key: PRNGKeyArray | None,
    setup: Setup,
) -> tuple[FlowState, RESULTS]:
    """The PF-ODE with $\\log q$ integrated alongside, from `x` with `log_q`."""
    divergence = ExactDivergence() if divergence is None else divergence
    probes = fixed_probes(divergence, x.shape, key)
    flow = ProbabilityFlow(sde, score, setup.t_max, divergence=divergence)
    y0 = FlowState(x, log_q, probes)
    return integrate(
        dfx.ODETerm(flow), setup.solver, y0, setup.steps, throw=setup.throw
    )


def log_prob_ode(
    score: ScoreFn,
    sde: AbstractSDE,
    x: Float[Array, "n *d"],
    *,
    divergence: AbstractDivergence | None = None,
    key: PRNGKeyArray | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
    r"""The model's $\log q_{t_{min}}(x)$ for data `x` by the probability-flow ODE:
    integrate from $t_{min}$ up to $t_{max}$ and add the log-density of
    $\mathcal N(0, \sigma_{t_{max}}^2 I)$ there (Song et al. 2021, App. D.2;
    `docs/math.md` (4.3)).

    **Arguments:** the model and its schedule, the data `x` `(n, *d)`, and

    - `divergence`: `ExactDivergence()` (default) or `Hutchinson(...)`, whose
        probes are drawn once per solve from `key`.
    - the `SolveOptions`: any Diffrax ODE solver (`Tsit5` by default), adaptive
        (`PIDController(rtol=1e-5, atol=1e-5)`) unless `num_steps` fixes the steps.

    **Returns:** `Samples` with `log_q` the log-densities `(n, 1)` and `x` the
    latents at $t_{max}$.
    """
    # Data to noise: τ runs backwards, from t_max - t_min to 0 (fine for ODE solvers).
    setup, x = ode_start(score, sde, options, x_init=x, name="x", to_noise=True)
    zeros = jnp.zeros(x.shape[0], x.dtype)
    y1, result = _flow(score, sde, x, zeros, divergence, key, setup)
    # y1.log_q = log q_{t_max}(z) - log q_{t_min}(x) along the flow.
    assert y1.log_q is not None
    log_q = prior_log_prob(sde, setup.t_max, y1.x) - y1.log_q
    return Samples(y1.x, log_q[:, None], result=result)


def sample_ode_with_density(
    score: ScoreFn,
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"],
    *,
    divergence: AbstractDivergence | None = None,
    key: PRNGKeyArray | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
    r"""Sample with the probability-flow ODE from noise `x_init` and integrate
    $\log q_t$ along it, from the starting noise's own log-density (Skreta et al.
    2025, Prop. 5; `docs/math.md` (4.2)). Arguments as `log_prob_ode`.

    **Returns:** `Samples` with the samples and their $\log q_{t_{min}}$ `(n, 1)`.
    """
    setup, x = ode_start(score, sde, options, x_init=x_init)
    log_q = prior_log_prob(sde, setup.t_max, x)
    y1, result = _flow(score, sde, x, log_q, divergence, key, setup)
    assert y1.log_q is not None
    return Samples(y1.x, y1.log_q[:, None], result=result)


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
    num_draws = positive_int(num_draws, "num_draws")
    low, high = (float(v) for v in data_range)
    bits_per_dim_offset(data_range)  # checks the range
    u = jax.random.uniform(key, (num_draws, *x.shape))
    return low + (high - low) * (x.astype(u.dtype) + u) / 256.0


def bits_per_dim(
    score: ScoreFn,
    sde: AbstractSDE,
    images: Int[ArrayLike, "n *d"],
    *,
    key: PRNGKeyArray,
    num_dequant: int = 1,
    data_range: tuple[float, float] = (-1.0, 1.0),
    divergence: AbstractDivergence | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
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
    inverse_scaler(-1)`; `docs/math.md` §4). Each of the
    `num_dequant` draws of $u$ gives one estimate; `bpd` is their mean, an upper
    bound on the discrete negative log-likelihood in expectation.

    **Arguments:** as `log_prob_ode`, and

    - `images`: integers in $[0, 255]$, a batch `(n, *d)` (e.g. `uint8`).
    - `key`: for the dequantisation noise and any Hutchinson probes.
    - `num_dequant`: dequantisation draws per image.
    - `data_range`: $(a, b)$, the range the model's data was scaled to.

    **Returns:** `Samples`: `log_prob_ode`'s result on the `k·n` dequantised points
    (draw-major: the latents `x` and `log_q`), with `extras`:

    - `"bpd"`: bits/dim of each image, the mean over its draws, `(n,)`;
    - `"bpd_draws"`: bits/dim of each draw, `(k, n)`;
    - `"points"`: the dequantised, scaled inputs, `(k, n, *d)`.
    """
    check_options(options, SolveOptions)
    images = _check_images(images)
    num_dequant = positive_int(num_dequant, "num_dequant")
    offset = bits_per_dim_offset(data_range)
    dequant_key, probe_key = jax.random.split(check_key(key, "Dequantisation"))
    points = dequantize(
        images, key=dequant_key, num_draws=num_dequant, data_range=data_range
    )
    flat = points.reshape(-1, *images.shape[1:])
    out = log_prob_ode(
        score, sde, flat, divergence=divergence, key=probe_key, **options
    )
    assert out.log_q is not None
    dim = math.prod(images.shape[1:])
    draws = (-out.log_q[:, 0] / (dim * math.log(2)) + offset).reshape(num_dequant, -1)
    extras = {"bpd": jnp.mean(draws, axis=0), "bpd_draws": draws, "points": points}
    return Samples(out.x, out.log_q, extras, out.result)


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
