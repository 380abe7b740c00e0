r"""Log-densities along the probability-flow ODE (Chen et al. 2018; Song et al. 2021,
App. D.2; Skreta et al. 2025, Prop. 5; `docs/math.md` §4).

Along $dx/d\tau = u_\tau(x) = -f_t x + \tfrac{g_t^2}{2} s_t(x)$, the model's own
probability-flow field, $\frac{d}{d\tau}\log q_{t}(x_\tau) = -\nabla\cdot u =
d f_t - \tfrac{g_t^2}{2}\nabla\cdot s_t$. Unlike the Itô estimator this needs the
divergence of the network: exactly ($d$ JVPs) or by Hutchinson's estimator.
"""

import math
from collections.abc import Callable
from typing_extensions import Unpack

import diffrax as dfx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._density import AbstractDivergence, ExactDivergence
from .._model import ScoreFn, score_family
from .._schedule import AbstractSDE
from .._solve import (
    RESULTS,
    LikelihoodOptions,
    NoiseOptions,
    Samples,
    Setup,
    StepOptions,
    check_key,
    fixed_probes,
    integrate,
    positive_int,
    setup,
    split_key,
)
from .._term import FlowState, ProbabilityFlow
from .._util import concrete, ensure, error_if


def _flow(
    score: ScoreFn,
    sde: AbstractSDE,
    log_q: Array,
    divergence: AbstractDivergence | None,
    start: Setup,
) -> tuple[FlowState, RESULTS]:
    """The PF-ODE with $\\log q$ integrated alongside, from `start.x` with `log_q`."""
    divergence = ExactDivergence() if divergence is None else divergence
    probes = fixed_probes(divergence, start.x.shape, start)
    flow = ProbabilityFlow(sde, score, start.t_max, divergence=divergence)
    y0 = FlowState(start.x, log_q, probes)
    return integrate(
        dfx.ODETerm(flow), start.solver, y0, start.steps, throw=start.throw
    )


def log_prob_ode(
    score: ScoreFn,
    sde: AbstractSDE,
    x: Float[Array, "n *d"],
    *,
    divergence: AbstractDivergence | None = None,
    log_q_t_max: Callable[[Array], ArrayLike] | None = None,
    **options: Unpack[LikelihoodOptions],
) -> Samples:
    r"""The model's $\log q_{t_{min}}(x)$ for data `x` by the probability-flow ODE:
    integrate from $t_{min}$ up to $t_{max}$ and add the log-density of
    $\mathcal N(0, \sigma_{t_{max}}^2 I)$ there (Song et al. 2021, App. D.2;
    `docs/math.md` (4.3)).

    **Arguments:** the model and its schedule, the data `x` `(n, *d)`, and

    - `divergence`: `ExactDivergence()` (default) or `Hutchinson(...)`, whose
        probes are drawn once per solve from `key`.
    - `log_q_t_max`: the model's $\log q_{t_{max}}$ of one latent, `z -> scalar`,
        needed when `t_max` is below the schedule's own: there $q_{t_{max}}$ is not
        the Gaussian $\mathcal N(0, \sigma_{t_{max}}^2 I)$ (its mean part
        $\alpha_{t_{max}} x_0$ is not negligible; `docs/math.md` §4 has how far
        off it is), so without it such a `t_max` is refused.
    - the `SolveOptions` but the starting batch (`x` is the start): any Diffrax ODE
        solver (`Tsit5` by default), adaptive (`PIDController(rtol=1e-5,
        atol=1e-5)`) unless `num_steps` fixes the steps.

    **Returns:** `Samples` with `log_q` the log-densities `(n, 1)` and `x` the
    latents at $t_{max}$.
    """
    _refuse_start_options(options)
    # Data to noise: τ runs backwards, from t_max - t_min to 0 (fine for ODE solvers).
    start = setup(
        sde, {**options, "x_init": x}, models=score_family(score),
        default_solver=dfx.Tsit5(), ode=True, to_noise=True, start_name="x",
    )  # fmt: skip
    zeros = jnp.zeros(start.x.shape[0], start.x.dtype)
    y1, result = _flow(score, sde, zeros, divergence, start)
    # y1.log_q = log q_{t_max}(z) - log q_{t_min}(x) along the flow.
    assert y1.log_q is not None
    if log_q_t_max is None:
        y1 = _refuse_short_range(sde, start.t_max, y1)
        end = jax.vmap(lambda z: sde.prior_log_prob(z, start.t_max))(y1.x)
    else:
        end = jax.vmap(lambda z: jnp.asarray(log_q_t_max(z), y1.x.dtype))(y1.x)
    assert y1.log_q is not None
    log_q = end - y1.log_q
    return Samples(y1.x, log_q[:, None], result=result)


_SHORT_RANGE = (
    "`log_prob_ode` with `t_max` below the schedule's own needs the model's "
    "log-density there, `log_q_t_max=`: at t_max the noised data is not the "
    "Gaussian N(0, σ²_{{t_max}} I) (measured on a 784-d Gaussian mixture: off by "
    "-11.8 nats on VP at t_max = 0.5, -290 at 0.2; docs/math.md §4). Got "
    "t_max={got} for a schedule whose t_max is {own}."
)


def _refuse_short_range(
    sde: AbstractSDE, t_max: float | Array, y: FlowState
) -> FlowState:
    """`y`, refused where `t_max` is below the schedule's own: at once where known,
    at run time where traced."""
    message = _SHORT_RANGE.replace("{own}", str(sde.t_max))
    ensure(t_max, lambda t: t >= sde.t_max, message)  # known: raises now
    if concrete(t_max) is None:
        y = error_if(y, t_max < sde.t_max, message.format(got="a traced value"))
    return y


def _refuse_start_options(options) -> None:
    given = sorted({"num_samples", "shape", "x_init"} & set(options))
    if given:
        raise TypeError(
            f"Unexpected keyword argument(s) {given}: the likelihood functions start "
            "from the data they are given."
        )


def sample_ode_with_density(
    score: ScoreFn,
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"] | None = None,
    *,
    divergence: AbstractDivergence | None = None,
    **options: Unpack[NoiseOptions],
) -> Samples:
    r"""Sample with the probability-flow ODE from noise `x_init` (or drawn with
    `key`, `num_samples`, `shape`) and integrate $\log q_t$ along it, from the
    starting noise's own log-density (Skreta et al. 2025, Prop. 5; `docs/math.md`
    (4.2)). Arguments as `log_prob_ode`, with the starting noise as `sample_ode`.

    **Returns:** `Samples` with the samples and their $\log q_{t_{min}}$ `(n, 1)`.
    """
    if x_init is not None:
        options = {**options, "x_init": x_init}  # pyright: ignore[reportAssignmentType]
    start = setup(
        sde, options, models=score_family(score), default_solver=dfx.Tsit5(), ode=True
    )
    log_q = jax.vmap(lambda xi: sde.prior_log_prob(xi, start.t_max))(start.x)
    y1, result = _flow(score, sde, log_q, divergence, start)
    assert y1.log_q is not None
    return Samples(y1.x, y1.log_q[:, None], result=result)


# ------------------------------------------------------------------- bits/dim


def bits_per_dim_offset(
    data_range: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (-1.0, 1.0),
) -> Float[Array, ""]:
    """$\\log_2(256 / (b - a))$: what bits/dim gain from the scaling of 8-bit data to
    `data_range` $= (a, b)$. 7 for $[-1, 1]$, 8 for $[0, 1]$; see `bits_per_dim`."""
    low, high = _data_range(data_range)
    return jnp.log2(256.0 / (high - low))


def _data_range(data_range) -> tuple[Array, Array]:
    if len(data_range) != 2:
        raise ValueError(f"`data_range` must be (low, high); got {data_range!r}.")
    low = ensure(
        data_range[0], jnp.isfinite, "`data_range`'s low must be finite; got {got}."
    )
    high = ensure(
        data_range[1],
        lambda h: jnp.isfinite(h) & (h > low),
        "`data_range` must be (low, high) with finite low < high; got high={got}.",
    )
    return low, high


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
    low, high = _data_range(data_range)
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
    **options: Unpack[StepOptions],
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

    Every check works under `jax.jit`: the dtype and shape at once, the pixel
    range at once where the images are known and at run time where traced.

    **Returns:** `Samples`: `log_prob_ode`'s result on the `k·n` dequantised points
    (draw-major: the latents `x` and `log_q`), with `extras`:

    - `"bpd"`: bits/dim of each image, the mean over its draws, `(n,)`;
    - `"bpd_draws"`: bits/dim of each draw, `(k, n)`;
    - `"points"`: the dequantised, scaled inputs, `(k, n, *d)`.
    """
    images = _check_images(images)
    num_dequant = positive_int(num_dequant, "num_dequant")
    offset = bits_per_dim_offset(data_range)
    # As every sampler's key (`split_key`): the first half draws the starting
    # points (the dequantisation noise), the second the sampler's own (probes).
    dequant_key, probe_key = split_key(check_key(key))
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
    """The images as an integer array: dtype and shape checked now, the pixel range
    now where known and at run time where traced (`bits_per_dim` under `jax.jit`)."""
    values = jnp.asarray(images)
    if not jnp.issubdtype(values.dtype, jnp.integer):
        raise TypeError(
            "Expected 8-bit images as integers in [0, 255] (e.g. uint8); got dtype "
            f"{values.dtype}. Pass the raw pixel values, not data already scaled."
        )
    if values.ndim < 2:
        raise ValueError(
            f"Expected a batch of images of shape (n, *d); got shape {values.shape}."
        )
    known = concrete(values)
    if known is not None:
        if known.size and (known.min() < 0 or known.max() > 255):
            raise ValueError(
                "Expected pixel values in [0, 255]; got values in "
                f"[{known.min()}, {known.max()}]."
            )
        return values
    bad = jnp.any((values < 0) | (values > 255))
    return error_if(values, bad, "Expected pixel values in [0, 255].")
