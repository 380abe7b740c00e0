"""Controlling the log-density of samples: high-density sampling, density guidance,
prior guidance and score alignment (Karczewski, Heinonen & Garg 2025a, b).

Everything here is in the library's convention: reverse time $\\tau = t_{max} - t$
runs forward from noise to data, and the model's probability-flow field is
$u = -f_t x + \\tfrac12 g_t^2 s_t(x)$. Each sampler is that ODE with the score
rescaled by a factor $\\eta_t(x)$,

$$\\frac{dx}{d\\tau} = -f_t x + \\tfrac12 g_t^2\\,\\eta_t(x)\\,s_t(x),$$

solved with `diffrax.diffeqsolve`. Along any flow $dx/d\\tau = u + c\\,s$ the
model's log-density changes as (Fokker–Planck for $\\partial_\\tau\\log q$, then
the chain rule)

$$\\frac{d}{d\\tau}\\log q_t(x_\\tau) = -\\nabla\\cdot u + c\\lVert s\\rVert^2
= d f_t - \\tfrac12 g_t^2\\,\\nabla\\cdot s + c\\lVert s\\rVert^2,
\\qquad c = \\tfrac12 g_t^2(\\eta - 1),$$

so the extra term $c\\,s$ is the smallest change of the drift that sets the rate
(Karczewski et al. 2025b, Eq. 8). For every Gaussian path
$g_t^2 = -\\sigma_t^2\\,d\\lambda_t/dt$, so $d\\lambda/d\\tau = g_t^2/\\sigma_t^2$:
one unit of log-SNR $\\lambda$ is $\\sigma_t^2/g_t^2$ units of $\\tau$. Their code
works in $\\lambda$ from −10 to 10 with $\\tilde f = \\tfrac12\\sigma^2$, which is
this convention with the clock changed.
"""

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._density import AbstractDivergence, ExactDivergence, Hutchinson
from ._family import ScoreFn, check_family, score_family
from ._sample import Samples, _check_finite_result, _initial_state, sample_ode
from ._sde import AbstractSDE
from ._terms import _Clock, ode_settings, ode_solve_kwargs


def _inner(a: ArrayLike, b: ArrayLike) -> Array:
    return jnp.sum(jnp.asarray(a) * jnp.asarray(b))


def _is_concrete(x: Array) -> bool:
    try:
        float(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False
    return True


def _check_min_norm(value: float) -> None:
    if not value > 0:
        raise ValueError(f"`min_norm` must be positive; got {value}.")


def _check_quantile(q: float, name: str = "q") -> float:
    if not (isinstance(q, int | float) and 0.0 < q < 1.0):
        raise ValueError(
            f"`{name}` must be a quantile in the open interval (0, 1); got {q!r}."
        )
    return float(q)


# ----------------------------------------------------------------- clocks


def time_grid(
    sde: AbstractSDE,
    num_steps: int,
    *,
    spacing: str = "t",
    t_min: float | None = None,
    t_max: float | None = None,
) -> np.ndarray:
    """Step boundaries in reverse time $\\tau$, from 0 to $t_{max} - t_{min}$, for
    `diffrax.StepTo`.

    - `spacing="t"`: uniform in $t$ (what `num_steps` gives elsewhere).
    - `spacing="log_snr"`: uniform in the log-SNR $\\lambda_t$ (Kingma & Gao 2023),
        the clock of Karczewski et al.'s samplers; the times come from
        `AbstractSDE.time_at_log_snr`.
    """
    t_min, t_max = sde.time_range(t_min, t_max)
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"`num_steps` must be a positive integer; got {num_steps!r}.")
    if spacing == "t":
        ts = np.linspace(t_max, t_min, num_steps + 1)
    elif spacing == "log_snr":
        lams = np.linspace(
            float(sde.log_snr(t_max)), float(sde.log_snr(t_min)), num_steps + 1
        )
        ts = np.array(sde.time_at_log_snr(lams), dtype=np.float64)
        ts[0], ts[-1] = t_max, t_min
    else:
        raise ValueError(f"`spacing` must be 't' or 'log_snr'; got {spacing!r}.")
    return t_max - ts


# ------------------------------------------------------------- guidance rules


class AbstractGuidance(eqx.Module):
    """A rule for the score scale $\\eta_t(x)$ of the guided probability flow.

    `needs_laplacian` says whether $\\eta$ reads $\\Delta\\log q = \\nabla\\cdot s$
    (the samplers then estimate it with their `laplacian` divergence).
    """

    needs_laplacian: ClassVar[bool] = False

    @abc.abstractmethod
    def scale(
        self,
        t: Float[Array, ""],
        x: Float[Array, "*d"],
        score: Float[Array, "*d"],
        laplacian: Float[Array, ""] | None,
        sde: AbstractSDE,
    ) -> Float[Array, ""]:
        """$\\eta_t(x)$ for one example, given its score and (if needed) the
        Laplacian of $\\log q_t$ there."""


def _sigma_score_norm2(sde, t, score, floor: float) -> Array:
    """$\\lVert\\sigma_t s\\rVert^2$, floored at `floor`·d: the guidance divides by it
    and it vanishes at modes and saddles of $q_t$, where the correction is undefined.
    The floor keeps the drift finite there; the achieved rate then falls short."""
    value = sde.sigma(t) ** 2 * _inner(score, score)
    return jnp.maximum(value, floor * score.size)


class ScoreScale(AbstractGuidance):
    """A constant score scale $\\eta$. `ScoreScale(2.0)` is the high-density ODE
    $dx/d\\tau = -f x + g^2 s$, the reverse SDE's drift without its noise
    (Karczewski et al. 2025a, §4); it raises $\\log q$ by
    $\\tfrac12(\\eta - 1)\\lVert\\sigma s\\rVert^2$ per unit $\\lambda$ over the
    PF-ODE's own rate."""

    eta: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def scale(self, t, x, score, laplacian, sde):
        return self.eta.astype(score.dtype)


class DensityQuantile(AbstractGuidance):
    """Density guidance in its quantile form (Karczewski et al. 2025b, Eqs. 12–14):

    $$\\eta_t(x) = 1 + \\frac{\\sqrt{2d}\\,\\Phi^{-1}(q)}{\\lVert\\sigma_t s_t(x)\\rVert^2}.$$

    In our convention this makes
    $d\\log q = -\\nabla\\cdot u\\,d\\tau + \\tfrac12\\sqrt{2d}\\,\\Phi^{-1}(q)\\,d\\lambda$:
    the PF-ODE's own rate plus a constant per unit log-SNR. Why that constant: the
    reverse SDE's log-density drifts faster than the PF-ODE's by
    $\\tfrac12 g^2(\\lVert s\\rVert^2 + \\Delta\\log q)\\,d\\tau
    = \\tfrac12\\sqrt{2d}\\,h\\,d\\lambda$ with
    $h = \\sigma^2(\\Delta\\log q + \\lVert s\\rVert^2)/\\sqrt{2d}$, which is about
    $\\mathcal N(0, 1)$ on $q_t$ for large $d$; the quantile form follows the rate
    of $h$'s $q$-quantile. So $q > 0.5$ raises $\\log q_0$ and $q < 0.5$ lowers it,
    and no divergence is needed.

    Over a whole run the extra is $\\tfrac12\\sqrt{2d}\\,\\Phi^{-1}(q)\\,
    (\\lambda_{t_{min}} - \\lambda_{t_{max}})$ nats (about 19 Φ⁻¹(q) at d = 2 under
    the default VP range), which must stay below what the density can give: at low
    $d$ only $q$ near 0.5 can be reached when raising.

    **Arguments:**

    - `q`: the quantile, in (0, 1).
    - `min_norm`: floor on $\\lVert\\sigma s\\rVert^2/d$ (see `_sigma_score_norm2`).
    """

    # An array, not a static float, so that a sweep over q compiles once.
    q: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    min_norm: float = 1e-6

    def __check_init__(self):
        if self.q.shape != ():
            raise ValueError(f"`q` must be a scalar; got shape {self.q.shape}.")
        if _is_concrete(self.q):  # (not when rebuilt under a transformation)
            _check_quantile(float(self.q))
        _check_min_norm(self.min_norm)

    def scale(self, t, x, score, laplacian, sde):
        quantile = jax.scipy.special.ndtri(self.q.astype(score.dtype))
        excess = math.sqrt(2 * score.size) * quantile
        return 1 + excess / _sigma_score_norm2(sde, t, score, self.min_norm)


class DensityRate(AbstractGuidance):
    """Density guidance with a prescribed rate (Karczewski et al. 2025b, Eq. 8):
    $d\\log q_t(x_\\tau) = b_t(x)\\,d\\lambda$, by adding
    $\\frac{\\nabla\\cdot u + b\\,d\\lambda/d\\tau}{\\lVert s\\rVert^2}\\,s$ to the
    PF-ODE drift $u$, i.e.

    $$\\eta = 1 + \\frac{2\\,(b - \\frac{\\sigma^2}{g^2}(d f - \\tfrac12 g^2
    \\Delta\\log q))}{\\lVert\\sigma s\\rVert^2}.$$

    Needs the Laplacian $\\Delta\\log q = \\nabla\\cdot s$ (the sampler's
    `laplacian`, exact by default).

    **Arguments:**

    - `rate`: $b$, a callable `(t, x) -> scalar` on one example: the change of
        $\\log q$ per unit of log-SNR (which increases from noise to data).
    - `min_norm`: floor on $\\lVert\\sigma s\\rVert^2/d$.
    """

    rate: Callable[[Array, Array], ArrayLike]
    min_norm: float = 1e-6
    needs_laplacian: ClassVar[bool] = True

    def __check_init__(self):
        _check_min_norm(self.min_norm)
        if not callable(self.rate):
            raise TypeError(
                f"`rate` must be a callable `(t, x) -> scalar`; got {type(self.rate).__name__}."
            )

    def scale(self, t, x, score, laplacian, sde):
        assert laplacian is not None
        f, g2, sigma2 = sde.drift_coef(t), sde.diffusion_squared(t), sde.sigma(t) ** 2
        pf_rate = sigma2 / g2 * (x.size * f - 0.5 * g2 * laplacian)  # per unit λ
        wanted = jnp.asarray(self.rate(t, x))
        return 1 + 2 * (wanted - pf_rate) / _sigma_score_norm2(
            sde, t, score, self.min_norm
        )


# ------------------------------------------------------- deterministic flow


class _GuidedState(eqx.Module):
    x: Array
    log_q: Array | None  # None when not tracked: the solve is then the PF-ODE's
    probes: Array | None = None


class GuidedProbabilityFlow(eqx.Module):
    """The guided probability flow on a batch, in reverse time $\\tau$, for
    `diffrax.ODETerm`: `(x, log_q) -> (u_η, d log q/dτ)` with
    $u_\\eta = -f x + \\tfrac12 g^2\\eta s$ and
    $\\frac{d}{d\\tau}\\log q = d f - \\tfrac12 g^2\\nabla\\cdot s
    + \\tfrac12 g^2(\\eta - 1)\\lVert s\\rVert^2$ (module docstring).

    `guidance=None` is the plain PF-ODE. With `laplacian=None` the Laplacian is not
    computed; with `log_q=None` in the state nothing is tracked (and an adaptive
    solver sees exactly the state `sample_ode` gives it).
    """

    clock: _Clock
    score_fn: ScoreFn
    guidance: AbstractGuidance | None
    laplacian: AbstractDivergence | None

    def __call__(self, tau, y: _GuidedState, args) -> _GuidedState:
        t = self.clock.t(tau)
        sde = self.clock.sde
        f, g2 = sde.drift_coef(t), sde.diffusion_squared(t)

        def one(x, probes):
            fn = lambda v: self.score_fn(t, v)
            if self.laplacian is None:
                score, lap = fn(x), None
            else:
                score, lap = self.laplacian(fn, x, probes)
            eta = (
                1.0
                if self.guidance is None
                else self.guidance.scale(t, x, score, lap, sde)
            )
            u = -f * x + 0.5 * g2 * eta * score
            if lap is None or y.log_q is None:
                return u, None
            rate = (
                x.size * f
                - 0.5 * g2 * lap
                + 0.5 * g2 * (eta - 1) * _inner(score, score)
            )
            return u, rate

        u, rate = jax.vmap(one)(y.x, y.probes)
        probes = None if y.probes is None else jnp.zeros_like(y.probes)
        return _GuidedState(u, rate, probes)


def _solve_guided(
    score, sde, guidance, laplacian, solver, controller, x, log_q, key, tau0, tau1,
    t_max, ts, num_steps, max_steps,
):  # fmt: skip
    probes = None if laplacian is None else laplacian.probes(x.shape, key=key)
    term = dfx.ODETerm(
        GuidedProbabilityFlow(_Clock(sde, t_max), score, guidance, laplacian)
    )
    if ts is not None:
        controller, dt0, max_steps = dfx.StepTo(ts=ts), None, ts.shape[0] - 1
    elif num_steps is not None:
        dt0 = (tau1 - tau0) / num_steps  # a first step for the user's controller
    else:
        dt0 = None
    sol = dfx.diffeqsolve(
        term,
        solver,
        t0=tau0,
        t1=tau1,
        dt0=dt0,
        y0=_GuidedState(x, log_q, probes),
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    assert sol.ys is not None
    return sol.ys.x[-1], None if log_q is None else sol.ys.log_q[-1]


_solve_guided_jit = eqx.filter_jit(_solve_guided)


# ---------------------------------------------------------- stochastic flow


class _Constant(eqx.Module):
    value: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def __call__(self, t):
        return jnp.asarray(self.value)


class _StepInputs(eqx.Module):
    """What the vector field hands the step: the state and the time; the score, its
    Laplacian and the weights are computed in `prod`, where the step's probes are."""

    t: Array
    x: Array
    log_q: Array


class StochasticGuidanceTerm(dfx.AbstractTerm):
    """Stochastic density guidance (Karczewski et al. 2025b, §4.2) on a batch, as one
    Diffrax term with control $(d\\tau, dW, dV)$:

    $$dx = -f x\\,d\\tau + \\tfrac12 g^2\\eta' s\\,d\\tau + \\varphi g\\,P\\,dW,
    \\qquad P = I - \\hat s\\hat s^\\top,$$

    $$\\eta' = \\eta - \\frac{\\varphi^2\\sigma^2\\,\\mathrm{tr}(P\\nabla s)}
    {\\lVert\\sigma s\\rVert^2}.$$

    The noise is orthogonal to the score, so by Itô's formula $\\log q$ gets no noise
    and the drift $\\tfrac12\\varphi^2 g^2\\,\\mathrm{tr}(P\\nabla s)$, which the
    correction in $\\eta'$ cancels: $\\log q$ follows the guidance's rate as in the
    deterministic flow. $\\mathrm{tr}(P\\nabla s) = \\Delta\\log q - \\hat s^\\top
    \\nabla s\\,\\hat s$; the paper drops the second term as small, we keep it (one
    more JVP of the linearisation the Laplacian needs anyway). $\\Delta\\log q$ is
    estimated by `laplacian`: Hutchinson with probes made from the increment $dV$ of
    a second Brownian path (Gaussian: $dV/\\sqrt{d\\tau}$; Rademacher: its signs), so
    each step gets fresh, independent probes, or exactly.

    The tracked increment is $\\big(d f - \\tfrac12 g^2\\Delta\\log q +
    \\tfrac12 g^2(\\eta' - 1)\\lVert s\\rVert^2 + \\tfrac12\\varphi^2 g^2
    \\mathrm{tr}(P\\nabla s)\\big)\\,d\\tau$. Everything is a function of the realised
    Euler–Maruyama step, so use `diffrax.Euler`.
    """

    clock: _Clock
    score_fn: ScoreFn
    guidance: AbstractGuidance
    laplacian: AbstractDivergence
    noise: Callable[[Any], Any]
    brownian: dfx.AbstractBrownianPath
    probe_brownian: dfx.AbstractBrownianPath | None
    min_norm: float = 1e-6

    def vf(self, t, y: _GuidedState, args) -> _StepInputs:
        assert y.log_q is not None
        return _StepInputs(self.clock.t(t), y.x, y.log_q)

    def contr(self, t0, t1, **kwargs):
        dv = None
        if self.probe_brownian is not None:
            dv = self.probe_brownian.evaluate(t0, t1, **kwargs)
        return t1 - t0, self.brownian.evaluate(t0, t1, **kwargs), dv

    def prod(self, vf: _StepInputs, control) -> _GuidedState:
        dtau, dw, dv = control
        t, sde = vf.t, self.clock.sde
        f, g2, sigma2 = sde.drift_coef(t), sde.diffusion_squared(t), sde.sigma(t) ** 2
        phi = jnp.asarray(self.noise(t))
        probes = self._probes(dv, dtau)

        def one(x, dw, probes):
            score, jvp = jax.linearize(lambda v: self.score_fn(t, v), x)
            lap = self.laplacian.trace(jvp, x, probes)
            norm2 = _sigma_score_norm2(sde, t, score, self.min_norm)
            unit = score * jnp.sqrt(sigma2 / norm2)
            trace_p = lap - _inner(unit, jvp(unit))
            eta = self.guidance.scale(t, x, score, lap, sde)
            eta = eta - phi**2 * sigma2 * trace_p / norm2
            noise = phi * jnp.sqrt(g2) * (dw - unit * _inner(unit, dw))
            dx = (-f * x + 0.5 * g2 * eta * score) * dtau + noise
            rate = (
                x.size * f
                - 0.5 * g2 * lap
                + 0.5 * g2 * (eta - 1) * _inner(score, score)
                + 0.5 * phi**2 * g2 * trace_p
            )
            return dx, rate * dtau

        dx, dlog_q = jax.vmap(one)(vf.x, dw, probes)
        return _GuidedState(dx, dlog_q)

    def _probes(self, dv, dtau):
        if dv is None:
            return None
        assert isinstance(self.laplacian, Hutchinson)
        if self.laplacian.distribution == "gaussian":
            return dv / jnp.sqrt(dtau)
        return jnp.where(dv >= 0, 1.0, -1.0).astype(dv.dtype)


@eqx.filter_jit
def _solve_stochastic(
    score, sde, guidance, laplacian, noise, x, log_q, key, ts, t_max, min_norm
):
    x_key, probe_key = jax.random.split(key)
    brownian = dfx.UnsafeBrownianPath(shape=x.shape, key=x_key)
    probe_brownian = None
    if isinstance(laplacian, Hutchinson):
        shape = (x.shape[0], laplacian.num_probes, *x.shape[1:])
        probe_brownian = dfx.UnsafeBrownianPath(shape=shape, key=probe_key)
    term = StochasticGuidanceTerm(
        _Clock(sde, t_max), score, guidance, laplacian, noise, brownian,
        probe_brownian, min_norm,
    )  # fmt: skip
    sol = dfx.diffeqsolve(
        term,
        dfx.Euler(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=_GuidedState(x, log_q),
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=dfx.StepTo(ts=ts),
        adjoint=dfx.ForwardMode(),
        max_steps=ts.shape[0] - 1,
    )
    assert sol.ys is not None
    return sol.ys.x[-1], sol.ys.log_q[-1]


# ----------------------------------------------------------------- samplers


def _start(sde, key, x_init, num_samples, shape, t_max):
    if x_init is None and key is None:
        raise ValueError("Give `key` to draw the initial noise, or `x_init`.")
    key = jax.random.key(0) if key is None else key
    return _initial_state(sde, key, x_init, num_samples, shape, t_max)


def _initial_log_q(sde, x, log_q_init, t_max):
    if log_q_init is None:
        if t_max != sde.t_max:
            std = sde.sigma(t_max)
            return jax.vmap(
                lambda v: (
                    -0.5 * jnp.sum((v / std) ** 2)
                    - v.size * (jnp.log(std) + 0.5 * math.log(2 * math.pi))
                )
            )(x)
        return jax.vmap(sde.prior_log_prob)(x)
    log_q_init = jnp.asarray(log_q_init, dtype=x.dtype)
    if log_q_init.shape != (x.shape[0],):
        raise ValueError(
            f"`log_q_init` must have shape (n,) = ({x.shape[0]},); got {log_q_init.shape}."
        )
    return log_q_init


def _grid_or_none(sde, spacing, num_steps, stepsize_controller, t_min, t_max):
    """The fixed-step grid: uniform in log-SNR unless `spacing="t"`; `None` for
    adaptive solves (no `num_steps`) or an explicit controller."""
    if spacing not in (None, "t", "log_snr"):
        raise ValueError(f"`spacing` must be 't' or 'log_snr'; got {spacing!r}.")
    if num_steps is None or stepsize_controller is not None:
        if spacing is not None:
            raise ValueError(
                "`spacing` places fixed steps: it needs `num_steps` and no "
                "`stepsize_controller`."
            )
        return None
    return time_grid(
        sde, num_steps, spacing=spacing or "log_snr", t_min=t_min, t_max=t_max
    )


def _noise_fn(noise) -> tuple[Callable[[Any], Any] | None, bool]:
    """`(φ(t), stochastic?)` from a non-negative float or a callable of $t$."""
    if callable(noise):
        return noise, True
    if not (isinstance(noise, int | float) and noise >= 0):
        raise ValueError(
            "`noise` must be a non-negative float or a callable `t -> φ(t)`; got "
            f"{noise!r}."
        )
    return (_Constant(float(noise)), True) if noise > 0 else (None, False)


def sample_density_guided(
    score: ScoreFn,
    sde: AbstractSDE,
    guidance: AbstractGuidance,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "n *d"] | None = None,
    noise: float | Callable[[Any], Any] = 0.0,
    laplacian: AbstractDivergence | None = None,
    track_density: bool = False,
    log_q_init: Float[Array, " n"] | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    spacing: str | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> Samples:
    """Sample with density guidance: the PF-ODE with the score rescaled by the
    guidance's $\\eta_t(x)$ (Karczewski et al. 2025b).

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
        along the path from `log_q_init` (the prior's by default).
    - `solver`, `num_steps`, `stepsize_controller`: as `sample_ode` (deterministic:
        `Tsit5` with a `PIDController` unless `num_steps` is given).
    - `spacing`: where fixed steps go: `"log_snr"` (the default with `num_steps`:
        uniform in log-SNR, as Karczewski et al. step) or `"t"` (uniform in $t$).
        Uniform steps in $t$ are far too coarse near the data end, where $\\lambda$
        moves fastest: on a 32-dimensional Gaussian, 200 Heun steps missed the
        requested log-density change by 1.25 nats uniform in $t$ and by 0.007
        uniform in $\\lambda$.
    - `t_min`, `t_max`: the time range.

    **Returns:** `Samples(x, log_q)`, `log_q` of shape `(n, 1)` when tracked.
    """
    if not isinstance(guidance, AbstractGuidance):
        raise TypeError(
            "`guidance` must be a superdiff guidance (DensityQuantile, DensityRate, "
            f"ScoreScale or a subclass of AbstractGuidance); got {type(guidance).__name__}."
        )
    noise_fn, stochastic = _noise_fn(noise)
    if stochastic:
        return _sample_stochastic(
            score, sde, guidance, noise_fn, key=key, num_samples=num_samples,
            shape=shape, x_init=x_init, laplacian=laplacian,
            track_density=track_density, log_q_init=log_q_init, solver=solver,
            num_steps=num_steps, stepsize_controller=stepsize_controller,
            spacing=spacing, t_min=t_min, t_max=t_max,
        )  # fmt: skip
    return _sample_guided_ode(
        score, sde, guidance, key=key, num_samples=num_samples,
        shape=shape, x_init=x_init, laplacian=laplacian, track_density=track_density,
        log_q_init=log_q_init, solver=solver, num_steps=num_steps,
        stepsize_controller=stepsize_controller, spacing=spacing, t_min=t_min,
        t_max=t_max, max_steps=max_steps,
    )  # fmt: skip


def _sample_guided_ode(
    score, sde, guidance, *, key, num_samples, shape, x_init, laplacian,
    track_density, log_q_init, solver, num_steps, stepsize_controller, spacing,
    t_min, t_max, max_steps, jump_tau=None,
) -> Samples:  # fmt: skip
    """One solve of the guided flow; `jump_tau` is a $\\tau$ where the guidance
    switches, made a step boundary (added to a fixed grid, or as `jump_ts` of a
    `ClipStepSizeController` around an adaptive controller)."""
    grid = _grid_or_none(sde, spacing, num_steps, stepsize_controller, t_min, t_max)
    t_min, t_max, solver, controller = ode_settings(
        sde, t_min, t_max, solver, num_steps, stepsize_controller
    )
    x, key = _start(sde, key, x_init, num_samples, shape, t_max)
    check_family(score_family(score), t_max, x[0])
    needs_lap = track_density or (guidance is not None and guidance.needs_laplacian)
    if needs_lap:
        laplacian = ExactDivergence() if laplacian is None else laplacian
    elif laplacian is not None:
        raise ValueError(
            "`laplacian` only applies with `track_density=True` or a guidance that "
            "needs it (DensityRate)."
        )
    elif log_q_init is not None:
        raise ValueError("`log_q_init` only applies with `track_density=True`.")
    log_q = _initial_log_q(sde, x, log_q_init, t_max) if track_density else None
    span = t_max - t_min
    if grid is None and num_steps is not None and stepsize_controller is None:
        grid = np.linspace(0.0, span, num_steps + 1)
    ts = None
    if grid is not None:
        if jump_tau is not None and 0.0 < jump_tau < span:
            grid = np.union1d(grid, [jump_tau])
        ts = jnp.asarray(grid)
    elif jump_tau is not None and isinstance(
        controller, dfx.AbstractAdaptiveStepSizeController
    ):
        controller = dfx.ClipStepSizeController(controller, jump_ts=[jump_tau])
    try:
        x, log_q = jax.block_until_ready(
            _solve_guided_jit(
                score, sde, guidance, laplacian if needs_lap else None, solver,
                controller, x, log_q, key, 0.0, span, t_max, ts, num_steps,
                max_steps,
            )
        )  # fmt: skip
    except eqx.EquinoxRuntimeError as err:
        if "maximum number of solver steps" not in str(err) or guidance is None:
            raise
        raise RuntimeError(
            f"The adaptive solver ran out of steps ({max_steps}) on the guided flow: "
            "the requested log-density is out of reach for some samples, so the "
            "drift needed grows without bound near a mode (the correction scales "
            "like 1/|s|). Ask for a quantile nearer 0.5 or a smaller rate, start "
            "from the median norm (`x_init=prior_guidance(sde, noise, 0.5)`), or use "
            "fixed steps (`num_steps`)."
        ) from err
    out = Samples(x, None if log_q is None else log_q[:, None])
    _check_finite_result(out)
    return out


def _sample_stochastic(
    score, sde, guidance, noise_fn, *, key, num_samples, shape, x_init, laplacian,
    track_density, log_q_init, solver, num_steps, stepsize_controller, spacing,
    t_min, t_max,
) -> Samples:  # fmt: skip
    if key is None:
        raise ValueError("Stochastic guidance (`noise` > 0) needs `key`.")
    if solver is not None and not isinstance(solver, dfx.Euler):
        raise ValueError(
            "Stochastic density guidance is supported with `diffrax.Euler()` only: its "
            "noise projection, Laplacian probes and log-density update are functions "
            f"of the realised Euler–Maruyama step. Got `{type(solver).__name__}`."
        )
    if num_steps is None or stepsize_controller is not None:
        raise ValueError(
            "Stochastic density guidance takes fixed steps: give `num_steps` (and "
            "`spacing`), not `stepsize_controller`."
        )
    t_min, t_max = sde.time_range(t_min, t_max)
    ts = time_grid(
        sde, num_steps, spacing=spacing or "log_snr", t_min=t_min, t_max=t_max
    )
    laplacian = Hutchinson(1) if laplacian is None else laplacian
    if not isinstance(laplacian, ExactDivergence | Hutchinson):
        raise TypeError(
            "Stochastic guidance draws its probes from a Brownian path, so "
            "`laplacian` must be `ExactDivergence()` or `Hutchinson(...)`; got "
            f"{type(laplacian).__name__}."
        )
    init_key, key = jax.random.split(key)
    x, _ = _initial_state(sde, init_key, x_init, num_samples, shape, t_max)
    check_family(score_family(score), t_max, x[0])
    if log_q_init is not None and not track_density:
        raise ValueError("`log_q_init` only applies with `track_density=True`.")
    log_q = _initial_log_q(sde, x, log_q_init, t_max)
    min_norm = getattr(guidance, "min_norm", 1e-6)
    x, log_q = _solve_stochastic(
        score, sde, guidance, laplacian, noise_fn, x, log_q, key, jnp.asarray(ts),
        t_max, min_norm,
    )  # fmt: skip
    out = Samples(x, log_q[:, None] if track_density else None)
    _check_finite_result(out)
    return out


def sample_high_density(
    score: ScoreFn,
    sde: AbstractSDE,
    *,
    t_switch: float | None = None,
    log_snr_switch: float | None = None,
    key: PRNGKeyArray | None = None,
    num_samples: int | None = None,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "n *d"] | None = None,
    laplacian: AbstractDivergence | None = None,
    track_density: bool = False,
    log_q_init: Float[Array, " n"] | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    spacing: str | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> Samples:
    """High-density sampling (Karczewski et al. 2025a, §4): the PF-ODE from noise to
    the switch time, then the noiseless high-density ODE
    $dx/d\\tau = -f x + g^2 s$ (`ScoreScale(2.0)`) to `t_min`.

    The switch is a time `t_switch` in $[t_{min}, t_{max}]$ or a log-SNR
    `log_snr_switch`; the earlier (noisier) the switch, the longer the HD-ODE climbs
    and the higher $\\log q_0$ of the samples (it converges to modes of $q_t$ as it
    goes). One solve, with the score scale switching from 1 to 2 at the switch,
    which is made a step boundary: added to the fixed-step grid (so the two stages
    together take `num_steps` or `num_steps + 1` steps), or a jump time of the
    adaptive controller (`diffrax.ClipStepSizeController`). Other arguments as
    `sample_density_guided`.
    """
    t_min_, t_max_ = sde.time_range(t_min, t_max)
    if (t_switch is None) == (log_snr_switch is None):
        raise ValueError("Give exactly one of `t_switch` and `log_snr_switch`.")
    if log_snr_switch is not None:
        t_switch = float(sde.time_at_log_snr(float(log_snr_switch)))
    assert t_switch is not None
    if not t_min_ <= t_switch <= t_max_:
        raise ValueError(
            f"The switch must lie in [t_min, t_max] = [{t_min_}, {t_max_}]; got "
            f"t_switch={t_switch}."
        )
    return _sample_guided_ode(
        score, sde, _SwitchedScoreScale(t_switch), key=key, num_samples=num_samples, shape=shape,
        x_init=x_init, laplacian=laplacian, track_density=track_density,
        log_q_init=log_q_init, solver=solver, num_steps=num_steps,
        stepsize_controller=stepsize_controller, spacing=spacing, t_min=t_min,
        t_max=t_max, max_steps=max_steps, jump_tau=t_max_ - t_switch,
    )  # fmt: skip


class _SwitchedScoreScale(AbstractGuidance):
    """$\\eta = 1$ (PF-ODE) before the switch time, 2 (HD-ODE) after it. An array,
    so that a sweep over switch times compiles once."""

    t_switch: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def scale(self, t, x, score, laplacian, sde):
        return jnp.where(t <= self.t_switch, 2.0, 1.0).astype(score.dtype)


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
    q = _check_quantile(q)
    x = jnp.asarray(x_init)
    if x.ndim < 2:
        raise ValueError(f"`x_init` must be a batch of shape (n, *d); got {x.shape}.")
    t_max = sde.t_max if t_max is None else float(t_max)
    sde.check_time(t_max, "t_max")
    dim = math.prod(x.shape[1:])
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
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> Float[Array, "n *d"]:
    """Prior guidance: `prior_guidance(sde, noise, q)`, then the PF-ODE
    (`sample_ode`, with its arguments)."""
    t_max_ = sde.time_range(t_min, t_max)[1]
    x, _ = _start(sde, key, x_init, num_samples, shape, t_max_)
    return sample_ode(
        score, sde, x_init=prior_guidance(sde, x, q, t_max_), solver=solver,
        num_steps=num_steps, stepsize_controller=stepsize_controller, t_min=t_min,
        t_max=t_max, max_steps=max_steps,
    )  # fmt: skip


# ----------------------------------------------------------- score alignment


class _AlignmentState(eqx.Module):
    x: Array
    v: Array
    omega: Array
    probes: Array | None = None


class ScoreAlignmentFlow(eqx.Module):
    """The PF-ODE with its first-order sensitivity, on a batch, in $\\tau$:
    $dx/d\\tau = u(x)$, $dv/d\\tau = J_u(x)\\,v$ (so $v_\\tau$ is the push-forward of
    $v_0$), and, when `divergence` is given,
    $d\\omega/d\\tau = -\\nabla_x\\cdot(J_u(x)\\,v)$, $v$ held fixed in the
    divergence (Karczewski et al. 2025b, App. on score alignment).

    Why $\\omega$: with $L = \\log q$ transported by the flow,
    $\\frac{d}{d\\tau}\\nabla L(x_\\tau) = -\\nabla(\\nabla\\cdot u) - J_u^\\top\\nabla L$,
    so $\\frac{d}{d\\tau}\\langle\\nabla L, v\\rangle = -\\langle\\nabla(\\nabla\\cdot
    u), v\\rangle$: started at $\\omega_0 = \\langle s_{t_{max}}, v_0\\rangle$, $\\omega$
    equals $\\langle s, v\\rangle$ all along, without the score at the end.
    """

    clock: _Clock
    score_fn: ScoreFn
    divergence: AbstractDivergence | None

    def __call__(self, tau, y: _AlignmentState, args) -> _AlignmentState:
        t = self.clock.t(tau)
        sde = self.clock.sde
        f, g2 = sde.drift_coef(t), sde.diffusion_squared(t)
        drift = lambda x: -f * x + 0.5 * g2 * self.score_fn(t, x)

        def one(x, v, probes):
            u, jv = jax.jvp(drift, (x,), (v,))
            if self.divergence is None:
                return u, jv, jnp.zeros((), x.dtype)
            _, div = self.divergence(lambda z: jax.jvp(drift, (z,), (v,))[1], x, probes)
            return u, jv, -div

        u, jv, domega = jax.vmap(one)(y.x, y.v, y.probes)
        probes = None if y.probes is None else jnp.zeros_like(y.probes)
        return _AlignmentState(u, jv, domega, probes)


@eqx.filter_jit
def _solve_alignment(score, sde, divergence, solver, controller, x, key, num_steps,
                     t_min, t_max, max_steps):  # fmt: skip
    v = jax.vmap(lambda xi: score(t_max, xi))(x)
    omega = jax.vmap(_inner)(v, v)
    probes = None if divergence is None else divergence.probes(x.shape, key=key)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(ScoreAlignmentFlow(_Clock(sde, t_max), score, divergence)),
        solver,
        y0=_AlignmentState(x, v, omega, probes),
        **ode_solve_kwargs(0.0, t_max - t_min, num_steps, controller, max_steps),
    )
    assert sol.ys is not None
    x1, v1, omega1 = sol.ys.x[-1], sol.ys.v[-1], sol.ys.omega[-1]
    if divergence is not None:
        return omega1
    s1 = jax.vmap(lambda xi: score(t_min, xi))(x1)
    return jax.vmap(_inner)(s1, v1)


def score_alignment(
    score: ScoreFn,
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"],
    *,
    method: str = "jvp",
    divergence: AbstractDivergence | None = None,
    key: PRNGKeyArray | None = None,
    solver: dfx.AbstractSolver | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    max_steps: int = 16_384,
) -> Float[Array, " n"]:
    """Score alignment (Karczewski et al. 2025b, §5): for each latent $x_T$,
    $\\langle s_{t_{min}}(x_0),\\ D\\Phi(x_T)\\,s_{t_{max}}(x_T)\\rangle$, the data
    score against the push-forward of the noise score through the PF-ODE map
    $\\Phi$. It equals $\\langle\\nabla_{x_T}\\log q_{t_{min}}(\\Phi(x_T)),
    s_{t_{max}}(x_T)\\rangle$: positive means moving the latent up the prior's score
    (shrinking it, for a centred prior) raises $\\log q_0$ — then prior guidance
    with $q < 0.5$ raises it and $q > 0.5$ lowers it.

    - `method="jvp"`: the sensitivity ODE $dv/d\\tau = J_u v$ (one JVP per step),
        then the model's score at the end.
    - `method="divergence"`: the divergence-only variant, integrating
        $\\omega = \\langle s, v\\rangle$ by $d\\omega/d\\tau = -\\nabla\\cdot(J_u v)$
        with `divergence` (exact by default, or `Hutchinson`): no score needed at
        the end, so it also applies where that score is unreliable.

    Solver arguments as `sample_ode`.
    """
    if method not in ("jvp", "divergence"):
        raise ValueError(f"`method` must be 'jvp' or 'divergence'; got {method!r}.")
    if method == "jvp" and divergence is not None:
        raise ValueError("`divergence` only applies with `method='divergence'`.")
    t_min, t_max, solver, controller = ode_settings(
        sde, t_min, t_max, solver, num_steps, stepsize_controller
    )
    x = jnp.asarray(x_init)
    if x.ndim < 2:
        raise ValueError(f"`x_init` must be a batch of shape (n, *d); got {x.shape}.")
    check_family(score_family(score), t_max, x[0])
    if method == "divergence":
        divergence = ExactDivergence() if divergence is None else divergence
    key = jax.random.key(0) if key is None else key
    return _solve_alignment(
        score, sde, divergence, solver, controller, x, key, num_steps, t_min, t_max,
        max_steps,
    )  # fmt: skip
