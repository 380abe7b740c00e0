"""Samplers that control the log-density of their samples (Karczewski, Heinonen &
Garg 2025a, b; `docs/math.md` §6): density guidance, deterministic or stochastic;
high-density sampling; prior guidance. Each builds its flow (`ProbabilityFlow` with a
guidance rule, or `StochasticGuidanceTerm`) and calls the one solve."""

import math
from collections.abc import Callable
from typing import Any
from typing_extensions import Unpack

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._density import AbstractDivergence, ExactDivergence, Hutchinson
from .._guidance import AbstractGuidance, SwitchedScoreScale, quantile
from .._model import ScoreFn, score_family
from .._schedule import AbstractSDE
from .._solve import (
    RESULTS,
    Samples,
    SolveOptions,
    check_options,
    fixed_probes,
    initial_log_q,
    integrate,
    setup,
    split_key,
)
from .._term import FlowState, ProbabilityFlow, StochasticGuidanceTerm
from .._util import describe, ensure


class _Constant(eqx.Module):
    value: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def __call__(self, t):
        return jnp.asarray(self.value)


def _noise_fn(noise) -> Callable[[Any], Any] | None:
    """$\\varphi(t)$ from a non-negative float or a callable of $t$; `None` for no
    noise (the deterministic flow)."""
    if callable(noise):
        return noise
    if not (isinstance(noise, int | float) and noise >= 0):
        raise ValueError(
            "`noise` must be a non-negative float or a callable `t -> φ(t)`; got "
            f"{noise!r}."
        )
    return _Constant(float(noise)) if noise > 0 else None


class GuidedOptions(SolveOptions, total=False):
    """The keywords of the guided samplers: the `SolveOptions` every sampler takes,
    and what `sample_density_guided` documents (`noise`, `laplacian`,
    `track_density`, `log_q_init`)."""

    noise: float | Callable[[Any], Any]
    laplacian: AbstractDivergence | None
    track_density: bool
    log_q_init: Float[Array, "n 1"] | None


_GUIDED = ("noise", "laplacian", "track_density", "log_q_init")


def sample_density_guided(
    score: ScoreFn,
    sde: AbstractSDE,
    guidance: AbstractGuidance,
    **options: Unpack[GuidedOptions],
) -> Samples:
    """Sample with density guidance: the PF-ODE with the score rescaled by the
    guidance's $\\eta_t(x)$ (Karczewski et al. 2025b; `docs/math.md` §6).

    **Arguments:**

    - `score`: the model, `(t, x) -> ∇log q_t(x)` on one example.
    - `sde`: its schedule.
    - `guidance`: `DensityQuantile(q)`, `DensityRate(b)` or `ScoreScale(η)`.
    - `key`, `num_samples`, `shape` or `x_init`: the starting noise at `t_max`.
        Karczewski et al. start density guidance from noise rescaled to the median
        norm: `x_init=prior_guidance(sde, noise, 0.5)`.
    - `noise`: $\\varphi$, the stochastic guidance's noise relative to $g$ (a float,
        or a callable of $t$ for noise in a window of times). 0 (default): the
        deterministic flow. Otherwise `StochasticGuidanceTerm` with
        `diffrax.Euler` and fixed steps (`num_steps`), and `key` drives the noise.
    - `laplacian`: how $\\Delta\\log q$ is computed when it is needed (for
        `DensityRate`, for `track_density`, and for stochastic guidance):
        `ExactDivergence()` (default for deterministic flows) or
        `Hutchinson(num_probes, distribution)` (default `Hutchinson(1)` for
        stochastic guidance, probes fresh every step; for deterministic flows the
        probes are drawn once per solve from `key`).
    - `track_density`: also return $\\log q_{t_{min}}$ of the samples, integrated
        along the path from `log_q_init`, `(n, 1)` (by default the starting noise's
        own log-density).
    - the `SolveOptions` every sampler shares, as `sample_ode` (deterministic:
        `Tsit5` with a `PIDController` unless `num_steps` is given). With fixed
        steps, ask for `spacing="log_snr"` (uniform in log-SNR, as Karczewski et
        al. step): uniform steps in $t$, every sampler's default, are far too
        coarse near the data end, where $\\lambda$ moves fastest: on a
        32-dimensional Gaussian, 200 Heun steps missed the requested log-density
        change by 1.25 nats uniform in $t$ and by 0.007 uniform in $\\lambda$.

    `key` is needed where randomness is drawn: the starting noise without `x_init`,
    Hutchinson probes, and the noise of stochastic guidance.

    **Returns:** `Samples(x, log_q)`, `log_q` of shape `(n, 1)` when tracked.
    """
    if not isinstance(guidance, AbstractGuidance):
        raise TypeError(
            "`guidance` must be a superdiff guidance (DensityQuantile, DensityRate, "
            "ScoreScale or a subclass of AbstractGuidance); got "
            f"{type(guidance).__name__}."
        )
    check_options(options, GuidedOptions)
    phi = _noise_fn(options.get("noise", 0.0))
    laplacian = options.get("laplacian")
    track_density = options.get("track_density", False)
    log_q_init = options.get("log_q_init")
    solve = {k: v for k, v in options.items() if k not in _GUIDED}
    if phi is not None:
        solver = options.get("solver")
        if solver is not None and not isinstance(solver, dfx.Euler):
            raise ValueError(
                "Stochastic density guidance is supported with `diffrax.Euler()` "
                "only: its noise projection, Laplacian probes and log-density update "
                "are functions of the realised Euler–Maruyama step. Got "
                f"`{type(solver).__name__}`."
            )
        if options.get("num_steps") is None or (
            options.get("stepsize_controller") is not None
        ):
            raise ValueError(
                "Stochastic density guidance takes fixed steps: give `num_steps` "
                "(and `spacing`), not `stepsize_controller`."
            )
        laplacian = Hutchinson(1) if laplacian is None else laplacian
    start = setup(
        sde, solve, models=score_family(score), ode=phi is None,
        default_solver=dfx.Tsit5() if phi is None else dfx.Euler(),
        switch=guidance.switch_time(),
    )  # fmt: skip
    if phi is not None or track_density or guidance.needs_laplacian:
        laplacian = ExactDivergence() if laplacian is None else laplacian
    elif laplacian is not None:
        raise ValueError(
            "`laplacian` only applies with `track_density=True` or a guidance that "
            "needs it (DensityRate)."
        )
    if log_q_init is not None and not track_density:
        raise ValueError("`log_q_init` only applies with `track_density=True`.")
    x, log_q = start.x, None
    if phi is not None or track_density:
        if log_q_init is not None and jnp.ndim(log_q_init) == 1:
            log_q_init = jnp.asarray(log_q_init)[:, None]
        log_q = initial_log_q(sde, start.t_max, x, log_q_init, 1)[:, 0]
    if phi is not None:
        assert laplacian is not None
        key = start.need_key("Stochastic guidance (`noise` > 0) draws noise")
        term = _stochastic_term(score, sde, guidance, laplacian, phi, x, key, start)
        y0, adjoint, out_of_steps = FlowState(x, log_q), dfx.ForwardMode(), None
    else:
        probes = fixed_probes(laplacian, x.shape, start)
        flow = ProbabilityFlow(sde, score, start.t_max, guidance, laplacian)
        term, y0 = dfx.ODETerm(flow), FlowState(x, log_q, probes)
        adjoint, out_of_steps = None, RESULTS.guidance_out_of_reach
    y1, result = integrate(
        term,
        start.solver,
        y0,
        start.steps,
        adjoint=adjoint,
        throw=start.throw,
        out_of_steps=out_of_steps,
    )
    log_q = y1.log_q[:, None] if track_density else None
    return Samples(y1.x, log_q, result=result)


def _stochastic_term(score, sde, guidance, laplacian, phi, x, key, start):
    """`StochasticGuidanceTerm` with its Brownian paths: one for the noise, one for
    the Laplacian's probes when it draws any."""
    # The sampler's key, split as every key is (`split_key`): its first half
    # drives the noise, the second the probes.
    x_key, probe_key = split_key(key)
    probe_shape = laplacian.probe_shape(x.shape)
    probe_path = None
    if probe_shape is not None:
        probe_path = dfx.UnsafeBrownianPath(shape=probe_shape, key=probe_key)
    return StochasticGuidanceTerm(
        sde,
        score,
        start.t_max,
        guidance,
        laplacian,
        phi,
        dfx.UnsafeBrownianPath(shape=x.shape, key=x_key),
        probe_path,
        getattr(guidance, "min_norm", 1e-6),
    )


def sample_high_density(
    score: ScoreFn,
    sde: AbstractSDE,
    *,
    t_switch: Float[ArrayLike, ""] | None = None,
    log_snr_switch: Float[ArrayLike, ""] | None = None,
    **options: Unpack[GuidedOptions],
) -> Samples:
    """High-density sampling (Karczewski et al. 2025a, §4; `docs/math.md` §6.2): the
    PF-ODE from noise to the switch time, then the noiseless high-density ODE
    $dx/d\\tau = -f x + g^2 s$ (`ScoreScale(2.0)`) to `t_min`.

    The switch is a time `t_switch` in $[t_{min}, t_{max}]$ or a log-SNR
    `log_snr_switch`; the earlier (noisier) the switch, the longer the HD-ODE climbs
    and the higher $\\log q_0$ of the samples (it converges to modes of $q_t$ as it
    goes). One solve, with the score scale switching from 1 to 2 at the switch,
    which is made a step boundary: the fixed-step grid's nearest interior boundary
    moves onto it (the two stages together take `num_steps` steps), or it is a jump
    time of the adaptive controller (`diffrax.ClipStepSizeController`). The switch
    may be traced: a sweep over it under `jax.jit` or `jax.vmap` compiles once.
    Other arguments (`GuidedOptions`) as `sample_density_guided`.
    """
    t_min, t_max = sde.time_range(options.get("t_min"), options.get("t_max"))
    if (t_switch is None) == (log_snr_switch is None):
        raise ValueError("Give exactly one of `t_switch` and `log_snr_switch`.")
    if log_snr_switch is not None:
        t_switch = sde.time_at_log_snr(jnp.asarray(log_snr_switch))
    assert t_switch is not None
    switch = ensure(
        t_switch,
        lambda s: (t_min <= s) & (s <= t_max),
        f"The switch must lie in [t_min, t_max] = [{describe(t_min)}, "
        f"{describe(t_max)}]; got t_switch={{got}}.",
    )
    if options.get("noise", 0.0):
        raise ValueError("High-density sampling is deterministic: give no `noise`.")
    return sample_density_guided(score, sde, SwitchedScoreScale(switch), **options)


# ------------------------------------------------------------ prior guidance


def chi_quantile(q: Float[ArrayLike, ""], dim: int) -> Float[Array, ""]:
    """The $q$-quantile of the $\\chi_d$ distribution (the norm of a standard
    normal vector in $d$ dimensions), traceable in $q$: bisection of the regularised
    incomplete gamma function $P(d/2, r^2/2) = q$ over $r^2 \\in [0, u]$, with $u$
    above the quantile by Laurent & Massart's (2000) tail bound $\\chi^2_d \\le d +
    2\\sqrt{dL} + 2L$ with probability $1 - e^{-L}$."""
    q = jnp.asarray(q, dtype=float)
    tail = -jnp.log1p(-q)
    hi = dim + 2 * jnp.sqrt(dim * tail) + 2 * tail + 1.0
    lo = jnp.zeros_like(hi)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = jax.scipy.special.gammainc(0.5 * dim, 0.5 * mid) < q
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 80, halve, (lo, hi))
    return jnp.sqrt(0.5 * (lo + hi))


def prior_guidance(
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"],
    q: Float[ArrayLike, ""],
    t_max: Float[ArrayLike, ""] | None = None,
) -> Float[Array, "n *d"]:
    """Rescale each starting noise to the norm $\\sigma_{t_{max}}\\,\\chi_d^{-1}(q)$,
    the $q$-quantile of the prior's norm, keeping its direction (Karczewski et al.
    2025b, §5; Song et al. 2021 observed that scaling the latent changes detail).

    Under score alignment (`score_alignment` > 0), a smaller norm (q < 0.5) means a
    higher prior density and so a higher $\\log q_0$ after the PF-ODE. A zero row
    stays zero. `q` and `t_max` may be traced.
    """
    q = quantile(q)
    x = jnp.asarray(x_init)
    if x.ndim < 2:
        raise ValueError(f"`x_init` must be a batch of shape (n, *d); got {x.shape}.")
    t_max = sde.check_time(sde.t_max if t_max is None else t_max, "t_max")
    dim = math.prod(x.shape[1:])
    target = (sde.sigma(t_max) * chi_quantile(q, dim)).astype(x.dtype)
    norms = jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))
    factor = jnp.where(norms > 0, target / jnp.where(norms > 0, norms, 1.0), 0.0)
    return x * factor.reshape(-1, *([1] * (x.ndim - 1)))


def sample_prior_guided(
    score: ScoreFn,
    sde: AbstractSDE,
    q: Float[ArrayLike, ""],
    **options: Unpack[SolveOptions],
) -> Samples:
    """Prior guidance (`docs/math.md` §6): the starting noise rescaled by
    `prior_guidance(sde, noise, q)`, then the PF-ODE, with `sample_ode`'s
    arguments. `q` may be traced: a sweep over it compiles once."""
    start = setup(
        sde, options, models=score_family(score), default_solver=dfx.Tsit5(), ode=True
    )
    x = prior_guidance(sde, start.x, q, start.t_max)
    term = dfx.ODETerm(ProbabilityFlow(sde, score, start.t_max))
    y1, result = integrate(
        term, start.solver, FlowState(x), start.steps, throw=start.throw
    )
    return Samples(y1.x, result=result)
