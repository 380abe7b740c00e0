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
import scipy.stats
from jaxtyping import Array, Float, PRNGKeyArray

from ._divergence import AbstractDivergence, ExactDivergence, Hutchinson
from ._family import ScoreFn, check_family, score_family
from ._guidance import AbstractGuidance, SwitchedScoreScale, check_quantile
from ._samplers import sample_ode
from ._sde import AbstractSDE
from ._solve import (
    RESULTS,
    Samples,
    SolveOptions,
    check_key,
    check_options,
    fixed_probes,
    initial_log_q,
    initial_noise,
    integrate,
    ode_setup,
)
from ._terms import FlowState, ProbabilityFlow, StochasticGuidanceTerm


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
    """The keywords of the guided samplers: the `SolveOptions`, and what
    `sample_density_guided` documents (`key`, `num_samples`, `shape`, `x_init`,
    `noise`, `laplacian`, `track_density`, `log_q_init`, `spacing`)."""

    key: PRNGKeyArray | None
    num_samples: int | None
    shape: tuple[int, ...] | None
    x_init: Float[Array, "n *d"] | None
    noise: float | Callable[[Any], Any]
    laplacian: AbstractDivergence | None
    track_density: bool
    log_q_init: Float[Array, "n 1"] | None
    spacing: str | None


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
    - the `SolveOptions` (`solver`, `num_steps`, `stepsize_controller`, `t_min`,
        `t_max`, `max_steps`, `throw`) as `sample_ode` (deterministic: `Tsit5` with
        a `PIDController` unless `num_steps` is given).
    - `spacing`: where fixed steps go: `"log_snr"` (the default with `num_steps`:
        uniform in log-SNR, as Karczewski et al. step) or `"t"` (uniform in $t$).
        Uniform steps in $t$ are far too coarse near the data end, where $\\lambda$
        moves fastest: on a 32-dimensional Gaussian, 200 Heun steps missed the
        requested log-density change by 1.25 nats uniform in $t$ and by 0.007
        uniform in $\\lambda$.

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
    solve = dict(options)
    phi = _noise_fn(options.get("noise", 0.0))
    key = options.get("key")
    laplacian = options.get("laplacian")
    track_density = options.get("track_density", False)
    log_q_init = options.get("log_q_init")
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
        key = check_key(key, "Stochastic guidance (`noise` > 0) draws noise")
        laplacian = Hutchinson(1) if laplacian is None else laplacian
        solve["solver"] = dfx.Euler()
    setup = ode_setup(
        sde,
        solve,
        spacing=options.get("spacing"),
        default_spacing="log_snr",
        t_switch=guidance.switch_time(),
    )
    x = initial_noise(
        sde,
        setup.t_max,
        key=key,
        num_samples=options.get("num_samples"),
        shape=options.get("shape"),
        x_init=options.get("x_init"),
    )
    if key is not None:  # its first half drew x
        _, key = jax.random.split(check_key(key, "Guided sampling"))
    check_family(score_family(score), setup.t_max, x[0])
    if phi is not None or track_density or guidance.needs_laplacian:
        laplacian = ExactDivergence() if laplacian is None else laplacian
    elif laplacian is not None:
        raise ValueError(
            "`laplacian` only applies with `track_density=True` or a guidance that "
            "needs it (DensityRate)."
        )
    if log_q_init is not None and not track_density:
        raise ValueError("`log_q_init` only applies with `track_density=True`.")
    log_q = None
    if phi is not None or track_density:
        if log_q_init is not None and jnp.ndim(log_q_init) == 1:
            log_q_init = jnp.asarray(log_q_init)[:, None]
        log_q = initial_log_q(sde, setup.t_max, x, log_q_init, 1)[:, 0]
    if phi is not None:
        assert key is not None and laplacian is not None
        term = _stochastic_term(score, sde, guidance, laplacian, phi, x, key, setup)
        y0, adjoint, out_of_steps = FlowState(x, log_q), dfx.ForwardMode(), None
    else:
        probes = fixed_probes(laplacian, x.shape, key)
        flow = ProbabilityFlow(sde, score, setup.t_max, guidance, laplacian)
        term, y0 = dfx.ODETerm(flow), FlowState(x, log_q, probes)
        adjoint, out_of_steps = None, RESULTS.guidance_out_of_reach
    y1, result = integrate(
        term,
        setup.solver,
        y0,
        setup.steps,
        adjoint=adjoint,
        throw=setup.throw,
        out_of_steps=out_of_steps,
    )
    log_q = y1.log_q[:, None] if track_density else None
    return Samples(y1.x, log_q, result=result)


def _stochastic_term(score, sde, guidance, laplacian, phi, x, key, setup):
    """`StochasticGuidanceTerm` with its Brownian paths: one for the noise, one for
    the Laplacian's probes when it draws any."""
    x_key, probe_key = jax.random.split(key)
    probe_shape = laplacian.probe_shape(x.shape)
    probe_path = None
    if probe_shape is not None:
        probe_path = dfx.UnsafeBrownianPath(shape=probe_shape, key=probe_key)
    return StochasticGuidanceTerm(
        sde,
        score,
        setup.t_max,
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
    t_switch: float | None = None,
    log_snr_switch: float | None = None,
    **options: Unpack[GuidedOptions],
) -> Samples:
    """High-density sampling (Karczewski et al. 2025a, §4; `docs/math.md` §6.2): the
    PF-ODE from noise to the switch time, then the noiseless high-density ODE
    $dx/d\\tau = -f x + g^2 s$ (`ScoreScale(2.0)`) to `t_min`.

    The switch is a time `t_switch` in $[t_{min}, t_{max}]$ or a log-SNR
    `log_snr_switch`; the earlier (noisier) the switch, the longer the HD-ODE climbs
    and the higher $\\log q_0$ of the samples (it converges to modes of $q_t$ as it
    goes). One solve, with the score scale switching from 1 to 2 at the switch,
    which is made a step boundary: added to the fixed-step grid (so the two stages
    together take `num_steps` or `num_steps + 1` steps), or a jump time of the
    adaptive controller (`diffrax.ClipStepSizeController`). Other arguments
    (`GuidedOptions`) as `sample_density_guided`.
    """
    t_min, t_max = sde.time_range(options.get("t_min"), options.get("t_max"))
    if (t_switch is None) == (log_snr_switch is None):
        raise ValueError("Give exactly one of `t_switch` and `log_snr_switch`.")
    if log_snr_switch is not None:
        with jax.ensure_compile_time_eval():  # configuration, even under jax.jit
            t_switch = float(sde.time_at_log_snr(float(log_snr_switch)))
    assert t_switch is not None
    if not t_min <= t_switch <= t_max:
        raise ValueError(
            f"The switch must lie in [t_min, t_max] = [{t_min}, {t_max}]; got "
            f"t_switch={t_switch}."
        )
    if options.get("noise", 0.0):
        raise ValueError("High-density sampling is deterministic: give no `noise`.")
    return sample_density_guided(score, sde, SwitchedScoreScale(t_switch), **options)


# ------------------------------------------------------------ prior guidance


def prior_guidance(
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"],
    q: float,
    t_max: float | None = None,
) -> Float[Array, "n *d"]:
    """Rescale each starting noise to the norm $\\sigma_{t_{max}}\\,\\chi_d^{-1}(q)$,
    the $q$-quantile of the prior's norm, keeping its direction (Karczewski et al.
    2025b, §5; Song et al. 2021 observed that scaling the latent changes detail).

    Under score alignment (`score_alignment` > 0), a smaller norm (q < 0.5) means a
    higher prior density and so a higher $\\log q_0$ after the PF-ODE. A zero row
    stays zero.
    """
    q = check_quantile(q)
    x = jnp.asarray(x_init)
    if x.ndim < 2:
        raise ValueError(f"`x_init` must be a batch of shape (n, *d); got {x.shape}.")
    t_max = sde.t_max if t_max is None else float(t_max)
    sde.check_time(t_max, "t_max")
    dim = math.prod(x.shape[1:])
    with jax.ensure_compile_time_eval():  # configuration, even under jax.jit
        target = float(sde.sigma(t_max)) * float(scipy.stats.chi.ppf(q, dim))
    norms = jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))
    factor = jnp.where(norms > 0, target / jnp.where(norms > 0, norms, 1.0), 0.0)
    return x * factor.reshape(-1, *([1] * (x.ndim - 1)))


def sample_prior_guided(
    score: ScoreFn,
    sde: AbstractSDE,
    q: float,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "n *d"] | None = None,
    **options: Unpack[SolveOptions],
) -> Samples:
    """Prior guidance (`docs/math.md` §6): `prior_guidance(sde, noise, q)`, then
    the PF-ODE (`sample_ode`, with its arguments)."""
    check_options(options, SolveOptions)
    t_max = sde.time_range(options.get("t_min"), options.get("t_max"))[1]
    x = initial_noise(
        sde, t_max, key=key, num_samples=num_samples, shape=shape, x_init=x_init
    )
    return sample_ode(score, sde, x_init=prior_guidance(sde, x, q, t_max), **options)
