"""Sampling and density tracking against exact Gaussian answers (docs/math.md §3, §5, §7).

All scores here are exact (`GaussianMixture`), so every discrepancy is the sampler's:
Monte Carlo error (which sets the tolerances, via the sample count) plus the
discretisation error (via the step count).
"""

import functools
import itertools
import math
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


SDE = sd.VPSDE()

# One anisotropic Gaussian: the target of the tracking and solver tests.
TARGET_MEAN = np.array([1.0, -0.5])
TARGET_VAR = np.array([0.3, 0.8])
TARGET = sd.GaussianMixture(TARGET_MEAN[None], TARGET_VAR[None], SDE)

# Two single-Gaussian models N((-+1.5, 0), 0.5^2 I) for the superposition tests.
LEFT = sd.GaussianMixture(np.array([[-1.5, 0.0]]), np.array([0.25]), SDE)
RIGHT = sd.GaussianMixture(np.array([[1.5, 0.0]]), np.array([0.25]), SDE)
PAIR = [LEFT.score, RIGHT.score]
# For these, log q^1 - log q^2 = -12 x_0 at t = 0, so E|log q^1 - log q^2| = 12 E|x_0|
# = 18 nats under either model alone (|x_0| ~ 1.5, three standard deviations from 0).


@eqx.filter_jit
def _log_prob(g, t, x):
    return jax.vmap(lambda xi: g.log_prob(t, xi))(x)


def _exact_log_qs(models, x):
    return jnp.stack([_log_prob(g, SDE.t_min, x) for g in models], axis=1)


def _assert_within(actual, expected, tol):
    """Elementwise |actual - expected| <= tol, with an array of tolerances."""
    diff = np.abs(np.asarray(actual) - np.asarray(expected))
    assert np.all(diff <= tol), f"|{actual} - {expected}| = {diff} exceeds {tol}"


def _assert_gaussian_moments(x, mean, var, sigmas=4.0, var_bias=0.0):
    """Mean within `sigmas` standard errors sqrt(var/n), variance within `sigmas`
    standard errors var sqrt(2/n) plus a relative allowance for discretisation."""
    n = x.shape[0]
    mean, var = np.asarray(mean), np.asarray(var)
    _assert_within(x.mean(0), mean, sigmas * np.sqrt(var / n))
    _assert_within(x.var(0), var, sigmas * var * np.sqrt(2 / n) + var_bias * var)


# ------------------------------------------------------------ density tracking


def _tracking_errors(estimator, num_steps, num, seed=0):
    """Track log q of TARGET from exact samples of q_{t_max}, started at the exact
    log q_{t_max}; return (tracked - exact) log q_{t_min} and the samples."""
    init_key, key = jax.random.split(jax.random.key(seed))
    x1 = TARGET.sample(num, SDE.t_max, key=init_key)
    out = sd.sample(
        TARGET.score,
        SDE,
        key=key,
        x_init=x1,
        track_density=True,
        log_q_init=_log_prob(TARGET, SDE.t_max, x1)[:, None],
        num_steps=num_steps,
        # The grid these bounds were measured on (docs/density.md): uniform in
        # log-SNR, where the kernel ratio's bias stays resolvable at 100-400 steps.
        spacing="log_snr",
        estimator=estimator,
    )
    assert out.log_q is not None and out.log_q.shape == (num, 1)
    return out.log_q[:, 0] - _log_prob(TARGET, SDE.t_min, out.x), out.x


ESTIMATORS = {
    "ito": sd.ItoEstimator(),
    "kernel-ratio": sd.KernelRatioEstimator(),
    "uncorrected": sd.KernelRatioEstimator(curvature_correction=False),
}


@functools.cache
def _tracking_stats(name, num_steps, num):
    """Mean and std of the tracking error (cached: compiling dominates the cost)."""
    err, _ = _tracking_errors(ESTIMATORS[name], num_steps, num)
    assert jnp.all(jnp.isfinite(err))
    return float(err.mean()), float(err.std())


# The error of the tracked log q at t_min is a discretisation bias plus per-sample
# noise. Measured (docs/math.md §3 and here; d = 2, VP, 1000 samples):
#   Itô:          250 steps +0.17 ± 0.79, 1000 steps +0.034 ± 0.39 nats;
#   kernel ratio: 250 steps +0.010 ± 0.12, 1000 steps -0.001 ± 0.057 nats.
# The noise falls like 1/sqrt(N) (std ~ 12.5/sqrt(N) for Itô, ~ 1.9/sqrt(N) for
# the kernel ratio), so quadrupling the steps halves it; we require a factor below
# 0.6 (the std of 1000+ samples is itself known to a few percent). The Itô bias is
# first order, ~ 45/N nats, and the kernel ratio's below ~ 2/N; we allow 60/N and
# 3/N, plus 4 standard errors std/sqrt(n) of the mean over n independent samples.
# Those bounds also make |mean| fall with N. For the kernel ratio the bias is
# resolvable against the noise only at coarse steps (~0.07 at 25 steps, ~0.01 at
# 100, ~0.002 at 400, with standard errors 0.006, 0.002, 0.001 for n = 4000), so it
# is checked on 25/100/400 steps; for Itô on 100/400/1600 with n = 1000
# (~0.42 ± 0.04, ~0.11 ± 0.02, ~0.027 ± 0.01).
TRACKING_RUNS = {
    "ito": ((100, 400, 1600), 1000, 60.0),
    "kernel-ratio": ((25, 100, 400), 4000, 3.0),
}


@pytest.mark.parametrize("name", list(TRACKING_RUNS))
def test_tracked_log_q_converges_to_exact(name):
    steps, num, bias_coef = TRACKING_RUNS[name]
    means, stds = zip(*(_tracking_stats(name, n, num) for n in steps), strict=True)
    for num_steps, mean, std in zip(steps, means, stds, strict=True):
        assert abs(mean) <= bias_coef / num_steps + 4 * std / math.sqrt(num), (
            f"{num_steps} steps: mean error {mean:+.4f} ± {std:.4f}"
        )
    for coarse, fine in itertools.pairwise(stds):
        assert fine < 0.6 * coarse, f"std {stds} does not shrink like 1/sqrt(N)"
    for coarse, fine in itertools.pairwise(means):
        assert abs(fine) < abs(coarse), f"|mean error| {means} does not shrink"


def test_kernel_ratio_is_more_accurate_than_ito():
    # At equal steps the per-sample error is ~9x smaller (docs/math.md §3: 0.13 vs 0.80
    # at 250 steps, 0.067 vs 0.41 at 1000); we require 4x, at 100 and 400 steps.
    for num_steps in (100, 400):
        _, ito = _tracking_stats("ito", num_steps, TRACKING_RUNS["ito"][1])
        _, kernel = _tracking_stats(
            "kernel-ratio", num_steps, TRACKING_RUNS["kernel-ratio"][1]
        )
        assert kernel < ito / 4, (num_steps, kernel, ito)


def test_curvature_correction_removes_the_first_order_bias():
    # The kernel ratio's mean error per step is (h²/4)‖2f/g² I - ∇s‖_F² (docs/math.md
    # (3.8)): first order overall. Measured at 25 steps, n = 16000 (standard error
    # 0.0035): +0.10 without the correction, -0.01 with it.
    num = 16_000
    plain, std = _tracking_stats("uncorrected", 25, num)
    corrected, _ = _tracking_stats("kernel-ratio", 25, num)
    assert plain > 10 * std / math.sqrt(num), (plain, std)  # the bias is resolved
    assert abs(corrected) < plain / 4, (corrected, plain)


def test_tracking_does_not_change_the_path():
    # The estimator only reads the path: with the same key and start, the samples
    # are those of plain sampling. (Same sizes as the Itô run above, whose
    # compiled solve is reused, and as the solver tests below.)
    _, x_tracked = _tracking_errors(sd.ItoEstimator(), 100, 1000)
    init_key, key = jax.random.split(jax.random.key(0))
    x1 = TARGET.sample(1000, SDE.t_max, key=init_key)
    plain = sd.sample(
        TARGET.score, SDE, key=key, x_init=x1, num_steps=100, spacing="log_snr"
    )
    assert plain.log_q is None
    np.testing.assert_allclose(x_tracked, plain.x, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------- superposition

# Two models, 2000 samples, 250 Euler–Maruyama steps: component shares have
# binomial standard error sqrt(w (1 - w) / 2000) ~ 0.011; we allow 4. (Measured with
# 5000 samples and 1000 steps: OR share 0.496, biased OR 0.703.) Per-component
# moments: a component holds ~1000 samples of N(+-1.5, 0.25) and is cut at x_0 = 0,
# three standard deviations away, which changes its moments by < 0.005.
NUM, STEPS = 2000, 250


def _superpose(operator, key=1, **kwargs):
    return sd.sample(
        PAIR, SDE, operator, key=jax.random.key(key), num_samples=NUM, shape=(2,),
        num_steps=STEPS, **kwargs,
    )  # fmt: skip


def _assert_component(x, mean_x0):
    _assert_gaussian_moments(x, [mean_x0, 0.0], [0.25, 0.25], var_bias=0.05)


def test_or_samples_the_mixture():
    out = _superpose(sd.Or())
    x = out.x
    right = x[:, 0] > 0
    share = float(right.mean())
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / NUM), share
    _assert_component(x[right], 1.5)
    _assert_component(x[~right], -1.5)
    # Exact log-density gap: 12 E|x_0| = 18 nats for the mixture; |x_0| has
    # standard deviation 0.5, so 12 * 4 * 0.5 / sqrt(n) ~ 0.5 nats is 4 errors.
    exact = _exact_log_qs([LEFT, RIGHT], x)
    gap = float(jnp.mean(jnp.abs(exact[:, 0] - exact[:, 1])))
    assert abs(gap - 18.0) < 12 * 4 * 0.5 / math.sqrt(NUM), gap


def test_or_bias_sets_the_mixture_weights():
    out = _superpose(sd.Or(bias=np.log([0.3, 0.7])))
    right = out.x[:, 0] > 0
    share = float(right.mean())
    assert abs(share - 0.7) < 4 * math.sqrt(0.21 / NUM), share
    _assert_component(out.x[right], 1.5)
    _assert_component(out.x[~right], -1.5)


def test_average_does_not_sample_the_mixture():
    # Averaging two scores of equal covariance gives exactly the score of the
    # Gaussian at the mean of the means: N(0, 0.25 I), for which
    # E|x_0| = 0.5 sqrt(2/pi) ~ 0.40 (std 0.5 sqrt(1 - 2/pi) ~ 0.30), not 1.5.
    out = _superpose(sd.Average())
    assert out.log_q is None
    _assert_gaussian_moments(out.x, [0.0, 0.0], [0.25, 0.25], var_bias=0.05)
    mean_abs = float(jnp.mean(jnp.abs(out.x[:, 0])))
    expected = 0.5 * math.sqrt(2 / math.pi)
    assert abs(mean_abs - expected) < 4 * 0.5 * math.sqrt(1 - 2 / math.pi) / math.sqrt(
        NUM
    ), mean_abs


def test_single_samples_one_model():
    out = _superpose(sd.Single(1))
    _assert_gaussian_moments(out.x, [1.5, 0.0], [0.25, 0.25], var_bias=0.05)


def test_and_concentrates_on_the_bisector():
    # AND keeps the two tracked log-densities equal, step by step, so the samples
    # end where q^1 = q^2: the bisector x_0 = 0. Measured: mean |x_0| 0.0013 and
    # exact |log q^1 - log q^2| 0.015 nats, against 1.5 and 18 nats for samples of
    # either model alone (or of OR). We require 1/100 of those.
    out = _superpose(sd.And())
    assert out.log_q is not None
    # The tracked densities are equal to round-off (every increment is).
    np.testing.assert_allclose(out.log_q[:, 0], out.log_q[:, 1], rtol=1e-10, atol=1e-10)
    assert float(jnp.mean(jnp.abs(out.x[:, 0]))) < 0.015
    exact = _exact_log_qs([LEFT, RIGHT], out.x)
    assert float(jnp.mean(jnp.abs(exact[:, 0] - exact[:, 1]))) < 0.18
    # ...while the samples still spread along the bisector.
    assert float(jnp.std(out.x[:, 1])) > 0.25


def test_and_with_three_models():
    # Three Gaussians N(mu_i, 0.25 I) with means on a circle of radius 1.5: their
    # densities are all equal only at the centre. The M = 3 solve must keep all
    # three tracked increments equal and land there (measured: mean distance
    # 0.0015 and exact log-density spread 0.015 nats, against 1.5 and ~13.5 nats
    # (|mu_i - mu_j|^2 / 0.5) for samples of any single model); we require about
    # 1/100 of those.
    angles = np.deg2rad([90.0, 210.0, 330.0])
    means = 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    models = [sd.GaussianMixture(m[None], np.array([0.25]), SDE) for m in means]
    out = sd.sample(
        [g.score for g in models], SDE, sd.And(), key=jax.random.key(0),
        num_samples=500, shape=(2,), num_steps=100,
    )  # fmt: skip
    assert out.log_q is not None and out.log_q.shape == (500, 3)
    spread = out.log_q.max(axis=1) - out.log_q.min(axis=1)
    assert float(spread.max()) < 1e-9 * (1 + float(jnp.max(jnp.abs(out.log_q))))
    assert float(jnp.mean(jnp.linalg.norm(out.x, axis=1))) < 0.015
    exact = _exact_log_qs(models, out.x)
    assert float(jnp.mean(exact.max(axis=1) - exact.min(axis=1))) < 0.15


@functools.cache
def _network(width, seed):
    mlp = sd.nn.MLP(2, width=width, depth=1, time_dim=8, key=jax.random.key(seed))
    return sd.EpsilonScore(mlp, SDE)


def _networks(widths=(8, 8, 8)):
    return [_network(w, seed) for seed, w in enumerate(widths)]


@eqx.filter_jit
def _family_outputs(stacked, tuple_, t, xs):
    members = [stacked.member(i) for i in range(stacked.num_models)]
    return (
        jax.vmap(lambda xi: tuple_(t, xi))(xs),
        jax.vmap(lambda xi: stacked(t, xi))(xs),
        stacked.batched(t, xs),
        tuple_.batched(t, xs),
        jnp.stack([jax.vmap(functools.partial(m, t))(xs) for m in members], 1),
    )


def test_stacked_models_match_score_tuple():
    nets = _networks()
    stacked = sd.StackedScores.from_models(nets)
    tuple_ = sd.ScoreTuple(tuple(nets))
    assert isinstance(sd.score_family(nets), sd.StackedScores)
    assert stacked.num_models == tuple_.num_models == 3
    xs = jax.random.normal(jax.random.key(0), (16, 2))
    reference, *outs = _family_outputs(stacked, tuple_, jnp.asarray(0.4), xs)
    for out in outs:
        np.testing.assert_allclose(out, reference, rtol=1e-12)

    # The M-model AND path, once with the models stacked (here from a plain list,
    # which stacks them) and once one network after another.
    def run(models, seed=3):
        return sd.sample(
            models, SDE, sd.And(), key=jax.random.key(seed), num_samples=32,
            shape=(2,), num_steps=20,
        )  # fmt: skip

    a, b = run(nets), run(tuple_)
    assert a.log_q is not None and b.log_q is not None
    # Every tracked increment is equal across the three models.
    scale = float(jnp.max(jnp.abs(a.log_q)))
    np.testing.assert_allclose(a.log_q - a.log_q[:, :1], 0.0, atol=1e-9 * scale)
    # The two evaluation orders differ by round-off, which AND amplifies where
    # scores nearly coincide (kappa ~ 1/|s_i - s_j|^2; we have seen 2e-6
    # relative); another key moves every sample by O(1).
    np.testing.assert_allclose(a.x, b.x, rtol=1e-4)
    np.testing.assert_allclose(a.log_q, b.log_q, rtol=1e-4)
    assert float(jnp.min(jnp.abs(run(nets, seed=4).x - a.x))) > 1e-3


# ------------------------------------------------------------ solvers and ODE


def _mixture():
    return sd.GaussianMixture(
        np.array([[1.0, -1.0], [-1.0, 0.5]]),
        np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]),
        SDE,
        weights=np.array([0.4, 0.6]),
    )


def _gaussian_flow_map(x1):
    """The exact PF-ODE map from t_max to t_min for TARGET (diagonal covariance):
    the standardised coordinate (x - alpha_t mu) / sqrt(alpha_t^2 v + sigma_t^2)
    is constant along the probability-flow ODE."""

    def scale(t):
        return jnp.sqrt(SDE.alpha(t) ** 2 * TARGET_VAR + SDE.sigma(t) ** 2)

    z = (x1 - SDE.alpha(SDE.t_max) * TARGET_MEAN) / scale(SDE.t_max)
    return SDE.alpha(SDE.t_min) * TARGET_MEAN + scale(SDE.t_min) * z


# Adaptive solvers with the default PIDController(rtol=1e-5, atol=1e-5): a local
# tolerance of 1e-5 over ~100 steps bounds the global error by ~1e-3.
@pytest.mark.parametrize(
    "kwargs, tol",
    [
        ({}, 1e-3),  # Tsit5 + PIDController, the default pair
        ({"solver": dfx.Dopri5()}, 1e-3),
    ],
    ids=["tsit5-default", "dopri5"],
)
def test_probability_flow_is_the_exact_flow_map(kwargs, tol):
    x1 = TARGET.sample(200, SDE.t_max, key=jax.random.key(0))
    x = sd.sample_ode(TARGET.score, SDE, x_init=x1, **kwargs).x
    _assert_within(x, _gaussian_flow_map(x1), tol)


def test_probability_flow_heun_is_second_order():
    # Fixed steps: Heun's global error is O(h^2), so 4x the steps cuts it ~16x
    # (measured 1.6e-3 at 50 steps, 1.0e-4 at 200); we require 8x.
    x1 = TARGET.sample(200, SDE.t_max, key=jax.random.key(0))
    exact = _gaussian_flow_map(x1)
    errors = [
        float(jnp.max(jnp.abs(
            sd.sample_ode(TARGET.score, SDE, x_init=x1, solver=dfx.Heun(), num_steps=n).x
            - exact
        )))
        for n in (50, 200)
    ]  # fmt: skip
    assert errors[1] < 1e-3
    assert errors[0] / errors[1] > 8, errors


def test_probability_flow_recovers_mixture_moments():
    # The PF-ODE maps q_{t_max} onto q_{t_min}; from exact samples of q_{t_max} its
    # output is n exact samples of q_{t_min} (up to ~1e-4 solver error), so its
    # moments have the Monte Carlo error of n samples.
    g = _mixture()
    n = 2000
    x1 = g.sample(n, SDE.t_max, key=jax.random.key(1))
    x = sd.sample_ode(g.score, SDE, x_init=x1).x
    means, covs = (np.asarray(a) for a in g.marginal_params(SDE.t_min))
    w = np.exp(np.asarray(g.log_weights))
    mean = w @ means
    cov = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", means, means))
    cov -= np.outer(mean, mean)
    _assert_within(x.mean(0), mean, 4 * np.sqrt(np.diag(cov) / n))
    # Covariance entries: standard error sqrt((c_ii c_jj + c_ij^2) / n) for a Gaussian;
    # a bimodal mixture's fourth moments differ, so allow 5.
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    _assert_within(np.cov(np.asarray(x).T), cov, 5 * se)
    # Drawn from the prior N(0, sigma_1^2 I) instead (a key): q_1's component means
    # alpha_1 mu_k are ~0.007 |mu_k| from 0, so the law differs by ~0.01 at most.
    x_prior = sd.sample_ode(
        g.score, SDE, key=jax.random.key(2), num_samples=n, shape=(2,)
    ).x
    _assert_within(x_prior.mean(0), mean, 4 * np.sqrt(np.diag(cov) / n) + 0.01)


# Euler–Maruyama, Heun, and the additive-noise stochastic Runge–Kutta methods; all
# converge to the same law because the reverse SDE's noise is additive. 1000
# samples from the prior, 100 steps. Euler's weak error is O(h): measured +2% on
# the variance at 50 steps, +1% at 100, so on top of 4 standard errors we allow 3%
# of the variance. (Starting from N(0, sigma_1^2 I) instead of q_1 shifts the mean
# by ~ alpha_1 |mu| ~ 0.007, negligible against 4 standard errors ~ 0.07.)
@pytest.mark.parametrize(
    "solver",
    [dfx.Euler(), dfx.Heun(), dfx.SRA1(), dfx.ShARK()],
    ids=lambda s: type(s).__name__,
)
def test_plain_sampling_with_any_sde_solver(solver):
    out = sd.sample(
        TARGET.score, SDE, key=jax.random.key(4), num_samples=1000, shape=(2,),
        num_steps=100, solver=solver,
    )  # fmt: skip
    assert out.log_q is None
    _assert_gaussian_moments(out.x, TARGET_MEAN, TARGET_VAR, var_bias=0.03)


@pytest.mark.parametrize(
    "solver",
    [dfx.Heun(), dfx.SRA1(), dfx.ShARK(), dfx.EulerHeun(), dfx.ItoMilstein()],
    ids=lambda s: type(s).__name__,
)
def test_tracking_needs_euler(solver):
    with pytest.raises(ValueError, match=r"diffrax\.Euler"):
        sd.sample(
            TARGET.score, SDE, key=jax.random.key(0), num_samples=8, shape=(2,),
            num_steps=10, solver=solver, track_density=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"diffrax\.Euler"):
        sd.sample(
            PAIR, SDE, sd.Or(), key=jax.random.key(0), num_samples=8, shape=(2,),
            num_steps=10, solver=solver,
        )  # fmt: skip


# ----------------------------------------------------------------- bad inputs


def _sample(models=PAIR, operator=None, **kwargs):
    # A batch of 8 two-dimensional examples from the prior, unless `x_init` is given.
    draw = {} if "x_init" in kwargs else {"num_samples": 8, "shape": (2,)}
    kwargs = {"key": jax.random.key(0), "num_steps": 5} | draw | kwargs
    return sd.sample(models, SDE, operator, **kwargs)


def test_models_of_different_architectures_do_not_stack():
    nets = _networks(widths=(8, 16))
    with pytest.raises(ValueError, match="stack"):
        sd.StackedScores.from_models(nets)
    # ...but run one by one when passed as a list.
    assert isinstance(sd.score_family(nets), sd.ScoreTuple)


def test_score_of_the_wrong_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        _sample([LEFT.score, lambda t, x: jnp.zeros(3)], sd.Or())
    with pytest.raises(ValueError, match="shape"):
        _sample(
            sd.EpsilonScore(sd.nn.MLP(3, width=8, depth=1, key=jax.random.key(0)), SDE)
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"t_min": 0.0}, r"`t_min` must lie in"),
        ({"t_max": 2.0}, r"`t_max` must lie in"),
        ({"t_min": 0.5, "t_max": 0.4}, r"t_min < t_max"),
        ({"num_steps": 0}, r"num_steps"),
        ({"x_init": jnp.zeros(2)}, r"batch of shape"),  # one example, not a batch
        ({"x_init": jnp.zeros((4, 3))}, r"shape \(3,\)"),  # wrong dimension
        ({"num_samples": None}, r"x_init"),  # neither x_init nor num_samples
        ({"x_init": jnp.zeros((4, 2)), "num_samples": 4}, r"not both"),
        ({"log_q_init": jnp.zeros((8, 3)), "track_density": True}, r"log_q_init"),
        ({"estimator": sd.KernelRatioEstimator()}, r"track_density=True"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _sample(**kwargs)


def test_bad_operators_raise():
    with pytest.raises(ValueError, match="temperature"):
        sd.Or(temperature=0.0)
    with pytest.raises(ValueError, match="at least two"):
        _sample([LEFT.score], sd.And())
    with pytest.raises(ValueError, match="track_density=True"):
        _sample(PAIR, sd.Or(), track_density=False)
    with pytest.raises(ValueError, match="models"):
        _sample(PAIR, sd.Single(index=2))
    with pytest.raises(TypeError, match="operator"):
        _sample(PAIR, "or")


def test_no_models_raise():
    with pytest.raises(ValueError, match="at least one"):
        _sample([])


def test_nan_scores_raise():
    nan_score = lambda t, x: jnp.full_like(x, jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"Score model\(s\) \[1\]"):
        _sample([LEFT.score, nan_score], sd.Or())
    # A score that breaks only later on the path is caught at the end.
    late_nan = lambda t, x: jnp.where(t < 0.5, jnp.nan, 1.0) * LEFT.score(t, x)
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        _sample(late_nan)


def test_sample_ode_bad_arguments_raise():
    with pytest.raises(ValueError, match="key"):
        sd.sample_ode(LEFT.score, SDE, num_samples=4, shape=(2,))
    with pytest.raises(ValueError):
        sd.sample_ode(LEFT.score, SDE, x_init=jnp.zeros(2))
    with pytest.raises(ValueError):
        sd.sample_ode(
            LEFT.score, SDE, key=jax.random.key(0), num_samples=4, shape=(2,), t_max=2.0
        )


def test_milstein_is_rejected_for_batched_sampling():
    # Milstein would materialise an (n·d)² Jacobian of the batched diffusion (it
    # asked for 512 GB here) although the additive noise makes its correction zero.
    with pytest.raises(ValueError, match="Jacobian"):
        _sample(TARGET.score, solver=dfx.ItoMilstein())


def test_and_curvature_correction_tracks_exact_densities():
    # AND's weights cancel the step's noise along s_1 - s_2, so the realised
    # diffusion is g²(I - P) and the plain Itô estimate is biased by
    # ½∫g² tr(P∇s_i) dτ: measured -5.7 and -6.2 nats for variances 0.25 and 0.09,
    # whatever the step count, and the exact densities end 0.52 nats apart on
    # average. The correction removes the bias down to Itô's first-order
    # discretisation error (~45/N = 0.18 at 250 steps, measured +0.12 and +0.08,
    # std 0.56 over samples: 4 standard errors of the mean of 1000 is 0.07).
    narrow = sd.GaussianMixture(np.array([[1.5, 0.0]]), np.array([0.09]), SDE)
    models = (LEFT, narrow)
    x1 = jax.random.normal(jax.random.key(0), (1000, 2))
    log_q1 = jnp.stack([_log_prob(g, SDE.t_max, x1) for g in models], axis=1)

    def run(correct):
        out = sd.sample(
            [g.score for g in models], SDE, sd.And(curvature_correction=correct),
            key=jax.random.key(1), x_init=x1, log_q_init=log_q1, num_steps=250,
            estimator=sd.ItoEstimator(), spacing="t",
        )  # fmt: skip
        assert out.log_q is not None
        exact = _exact_log_qs(models, out.x)
        gap = float(jnp.mean(jnp.abs(exact[:, 0] - exact[:, 1])))
        return np.asarray(jnp.mean(out.log_q - exact, axis=0)), gap

    bias, gap = run(True)
    _assert_within(bias, 0.0, 0.25)
    assert gap < 0.15, gap
    plain_bias, plain_gap = run(False)
    assert np.all(plain_bias < -5.0), plain_bias
    assert plain_gap > 0.4, plain_gap


def test_and_curvature_correction_needs_the_ito_estimator():
    with pytest.raises(ValueError, match="ItoEstimator"):
        _sample(
            operator=sd.And(curvature_correction=True),
            estimator=sd.KernelRatioEstimator(),
        )


# ----------------------------------------------------- operators users define


class _Negation(sd.AbstractOperator):
    """ "A NOT B" as fixed weights (1 + γ, -γ), defined outside the library by
    subclassing alone: the score q_A^{1+γ} q_B^{-γ}. For two Gaussians of equal
    covariance this is exactly the score of a Gaussian of the same covariance with
    mean (1 + γ) μ_A - γ μ_B at every t (docs/math.md (7.3)), so the reverse SDE
    samples that Gaussian."""

    gamma: float
    needs_density: ClassVar[bool] = False

    def __call__(self, inputs):
        return jnp.array([1 + self.gamma, -self.gamma], inputs.scores.dtype)


class _WeightedMixture(sd.AbstractOperator):
    """OR with mixture weights, written from scratch: softmax(log q + log w)."""

    log_weights: tuple[float, ...]
    needs_density: ClassVar[bool] = True  # declared, as every operator must

    def __call__(self, inputs):
        assert inputs.log_q is not None
        return jax.nn.softmax(inputs.log_q + jnp.asarray(self.log_weights))


@pytest.mark.parametrize("track", [False, True], ids=["any-solver", "tracked"])
def test_user_defined_negation_samples_its_closed_form(track):
    # LEFT NOT RIGHT with γ = 0.5: mean 1.5 (-1.5, 0) - 0.5 (1.5, 0) = (-3, 0).
    op = _Negation(0.5)
    solver = dfx.Euler() if track else dfx.Heun()
    out = _superpose(op, track_density=track, solver=solver)
    assert (out.log_q is not None) == track
    _assert_gaussian_moments(out.x, [-3.0, 0.0], [0.25, 0.25], var_bias=0.05)


def test_user_defined_mixture_operator_samples_the_mixture():
    out = _superpose(_WeightedMixture((math.log(0.2), math.log(0.8))))
    right = out.x[:, 0] > 0
    share = float(right.mean())
    assert abs(share - 0.8) < 4 * math.sqrt(0.16 / NUM), share
    _assert_component(out.x[right], 1.5)
    _assert_component(out.x[~right], -1.5)


@pytest.mark.parametrize("operator", [sd.Or(), sd.And()], ids=["or", "and"])
def test_the_estimator_changes_only_the_reported_log_q(operator):
    # The kernel-ratio increment is the Itô one plus terms the same for every model
    # (docs/math.md §3), so OR's softmax weights and AND's equalised increments do
    # not depend on the estimator: with the same noise the samples agree to float
    # rounding, and so do the differences log q^1 - log q^2; the log q differ.
    # (The curvature correction is not shared by the models; it is off here.)
    runs = [
        sd.sample(
            PAIR,
            SDE,
            operator,
            key=jax.random.key(5),
            num_samples=200,
            shape=(2,),
            num_steps=100,
            estimator=estimator,
        )  # fmt: skip
        for estimator in (
            sd.ItoEstimator(),
            sd.KernelRatioEstimator(curvature_correction=False),
        )
    ]
    (ito, kernel) = runs
    assert ito.log_q is not None and kernel.log_q is not None
    np.testing.assert_allclose(ito.x, kernel.x, atol=1e-9)
    gap = lambda out: out.log_q[:, 0] - out.log_q[:, 1]
    np.testing.assert_allclose(gap(ito), gap(kernel), atol=1e-7)
    assert float(jnp.max(jnp.abs(ito.log_q - kernel.log_q))) > 1e-3


def test_models_without_arrays_are_evaluated_one_by_one():
    # Modules around plain functions hold nothing to stack: `score_family` falls
    # back to a `ScoreTuple`, and stacking them explicitly says why it cannot.
    models = [sd.EpsilonScore(lambda t, x: x, SDE) for _ in range(2)]
    assert isinstance(sd.score_family(models), sd.ScoreTuple)
    with pytest.raises(ValueError, match="hold no arrays"):
        sd.StackedScores.from_models(models)
