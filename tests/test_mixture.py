"""Analytic Gaussian mixtures (docs/math.md §7) against direct formulas."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import superdiff as sd


MEANS = np.array([[1.0, -2.0, 0.5], [-1.5, 0.5, 0.0], [0.0, 2.0, -1.0]])
COVS = np.array(
    [
        [[0.5, 0.2, 0.0], [0.2, 0.3, 0.1], [0.0, 0.1, 0.4]],
        [[0.2, 0.0, 0.0], [0.0, 0.6, -0.1], [0.0, -0.1, 0.3]],
        [[0.3, -0.1, 0.05], [-0.1, 0.2, 0.0], [0.05, 0.0, 0.5]],
    ]
)
WEIGHTS = np.array([0.2, 0.5, 0.3])
SDES = [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(sigma_max=5.0)]
IDS = ["vp", "subvp", "ve"]


def _mixture(sde):
    # Unnormalised weights on purpose: the class normalises them.
    return sd.GaussianMixture(MEANS, COVS, sde, weights=2 * WEIGHTS)


def _scipy_log_prob(t, x, sde):
    if t == 0:
        alpha, sigma = 1.0, 0.0
    else:
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    logs = [
        math.log(w)
        + scipy.stats.multivariate_normal(
            alpha * m, alpha**2 * c + sigma**2 * np.eye(3)
        ).logpdf(x)
        for w, m, c in zip(WEIGHTS, MEANS, COVS, strict=True)
    ]
    return float(np.logaddexp.reduce(logs))


@eqx.filter_jit
def _grid(fn, ts, xs):
    """`fn(t, x)` for every time in `ts` and row of `xs`: one compiled call."""
    per_time = jax.vmap(fn, in_axes=(None, 0))
    return jax.vmap(per_time, in_axes=(0, None))(jnp.asarray(ts), jnp.asarray(xs))


def _batch(fn, t, xs):
    return _grid(fn, [t], xs)[0]


def _assert_within(actual, expected, tol):
    """Elementwise |actual - expected| <= tol, with an array of tolerances."""
    diff = np.abs(np.asarray(actual) - np.asarray(expected))
    assert np.all(diff <= tol), f"|difference| {diff} exceeds tolerance {tol}"


def _points(num=6, seed=0):
    return np.random.default_rng(seed).normal(size=(num, 3)) * 1.5


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_prob_matches_scipy(sde):
    g = _mixture(sde)
    xs = _points()
    ts = [0.0, sde.t_min, 0.1, 0.5, sde.t_max]
    expected = [[_scipy_log_prob(t, x, sde) for x in xs] for t in ts]
    np.testing.assert_allclose(_grid(g.log_prob, ts, xs), expected, rtol=1e-10)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_score_is_gradient_of_log_prob(sde):
    g = _mixture(sde)
    xs = _points(seed=1)
    ts = [0.0, sde.t_min, 0.05, 0.3, sde.t_max]
    np.testing.assert_allclose(
        _grid(g.score, ts, xs),
        _grid(jax.grad(g.log_prob, argnums=1), ts, xs),
        rtol=1e-8,
        atol=1e-10,
    )


def test_mixture_of_isotropic_and_diagonal_covariances():
    sde = sd.VPSDE()
    means = np.array([[0.0, 1.0], [2.0, -1.0]])
    iso = sd.GaussianMixture(means, np.array([0.3, 0.5]), sde)
    diag = sd.GaussianMixture(means, np.array([[0.3, 0.3], [0.5, 0.5]]), sde)
    full = sd.GaussianMixture(
        means, np.array([0.3, 0.5])[:, None, None] * np.eye(2), sde
    )
    xs, ts = np.array([[0.4, -0.2], [1.0, 2.0]]), [0.0, 0.2]
    expected = _grid(full.log_prob, ts, xs)
    np.testing.assert_allclose(_grid(iso.log_prob, ts, xs), expected, rtol=1e-12)
    np.testing.assert_allclose(_grid(diag.log_prob, ts, xs), expected, rtol=1e-12)
    # Isotropic and diagonal mixtures take the elementwise path; full ones the
    # Cholesky path: the scores and samples must agree too.
    assert iso.variances is not None and full.variances is None
    expected_score = _grid(full.score, ts, xs)
    np.testing.assert_allclose(_grid(iso.score, ts, xs), expected_score, rtol=1e-12)
    np.testing.assert_allclose(_grid(diag.score, ts, xs), expected_score, rtol=1e-12)
    for t in ts:
        key = jax.random.key(3)
        np.testing.assert_allclose(
            diag.sample(5, t, key=key), full.sample(5, t, key=key), rtol=1e-12
        )
    assert iso.component(1).variances is not None
    # Uniform weights by default.
    np.testing.assert_allclose(jnp.exp(iso.log_weights), [0.5, 0.5], rtol=1e-12)


def test_vp_marginal_at_t_max_is_near_standard_normal():
    # Under VP, q_1 = sum_k pi_k N(alpha_1 mu_k, alpha_1^2 Sigma_k + sigma_1^2 I)
    # with alpha_1 = exp(-B(1)/2) ~ 6.6e-3. Against N(0, I), the log-density
    # differs by at most ~ alpha |mu| |x| (the mean shift) plus O(alpha^2) terms
    # (the covariance), so we allow 2 alpha (1 + |mu|_max)(1 + |x|).
    sde = sd.VPSDE()
    g = _mixture(sde)
    alpha = float(sde.alpha(sde.t_max))
    assert alpha < 1e-2
    mu_max = np.max(np.linalg.norm(MEANS, axis=1))
    xs = _points(20, seed=2)
    standard = -0.5 * np.sum(xs**2, axis=1) - 1.5 * math.log(2 * math.pi)  # N(0, I)
    tols = 2 * alpha * (1 + mu_max) * (1 + np.linalg.norm(xs, axis=1))
    _assert_within(_batch(g.log_prob, sde.t_max, xs), standard, tols)
    # ...which is a real constraint: at t = 0.1 the mixture is far from N(0, I).
    gaps_early = np.abs(_batch(g.log_prob, 0.1, xs) - standard)
    assert np.mean(gaps_early) > 10 * np.max(tols)
    _assert_within(
        _batch(g.score, sde.t_max, xs),
        -xs,
        2 * alpha * (1 + mu_max) * (1 + 2 * np.abs(xs)),
    )


@pytest.mark.parametrize("t", [0.0, 0.3])
def test_samples_have_the_right_moments_and_shares(t):
    sde = sd.VPSDE()
    g = _mixture(sde)
    n = 4000
    x, labels = g.sample_with_labels(n, t, key=jax.random.key(0))
    assert x.shape == (n, 3) and labels.shape == (n,)
    means, covs = g.marginal_params(t)
    # Component shares: binomial standard error sqrt(w (1 - w) / n); allow 4.
    shares = np.bincount(np.asarray(labels), minlength=3) / n
    _assert_within(shares, WEIGHTS, 4 * np.sqrt(WEIGHTS * (1 - WEIGHTS) / n))
    # Per component: mean within 4 standard errors sqrt(diag(cov) / n_k), and
    # covariance entries within 4 standard errors sqrt((c_ii c_jj + c_ij^2) / n_k).
    for k in range(3):
        xs = np.asarray(x[labels == k])
        nk = len(xs)
        c = np.asarray(covs[k])
        _assert_within(xs.mean(0), means[k], 4 * np.sqrt(np.diag(c) / nk))
        se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / nk)
        _assert_within(np.cov(xs.T), c, 4 * se)
    # The mixture as a whole: mean sum_k pi_k m_k.
    total_mean = WEIGHTS @ np.asarray(means)
    total_cov = sum(
        w * (np.asarray(c) + np.outer(m, m))
        for w, m, c in zip(WEIGHTS, np.asarray(means), np.asarray(covs), strict=True)
    ) - np.outer(total_mean, total_mean)
    _assert_within(x.mean(0), total_mean, 4 * np.sqrt(np.diag(total_cov) / n))
    total_se = np.sqrt(
        (np.outer(np.diag(total_cov), np.diag(total_cov)) + total_cov**2) / n
    )
    # (The fourth moments of a mixture exceed the Gaussian ones; 5 errors.)
    _assert_within(np.cov(np.asarray(x).T), total_cov, 5 * total_se)
    np.testing.assert_allclose(g.sample(n, t, key=jax.random.key(0)), x)


def test_marginal_params():
    sde = sd.SubVPSDE()
    g = _mixture(sde)
    t = 0.4
    means, covs = g.marginal_params(t)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    np.testing.assert_allclose(means, alpha * MEANS, rtol=1e-12)
    np.testing.assert_allclose(covs, alpha**2 * COVS + sigma**2 * np.eye(3), rtol=1e-12)
    means0, covs0 = g.marginal_params(0.0)
    np.testing.assert_allclose(means0, MEANS, rtol=1e-12)
    np.testing.assert_allclose(covs0, COVS, rtol=1e-12)


def test_component():
    sde = sd.VPSDE()
    g = _mixture(sde)
    c = g.component(1)
    assert c.num_components == 1 and c.dim == 3
    x = jnp.array([0.1, 0.2, -0.3])
    expected = scipy.stats.multivariate_normal(MEANS[1], COVS[1]).logpdf(np.asarray(x))
    np.testing.assert_allclose(c.log_prob(0.0, x), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "means, covs, weights",
    [
        (np.zeros(3), np.ones(1), None),  # means not (K, d)
        (np.zeros((2, 3)), np.ones(3), None),  # covariances of the wrong length
        (np.zeros((2, 3)), np.ones((2, 2)), None),  # diagonal of the wrong dimension
        (np.zeros((2, 3)), np.ones((2, 3, 2)), None),  # non-square covariances
        (np.zeros((2, 3)), np.ones(2), np.ones(3)),  # weights of the wrong length
    ],
)
def test_bad_shapes_raise(means, covs, weights):
    with pytest.raises(ValueError):
        sd.GaussianMixture(means, covs, sd.VPSDE(), weights=weights)


def test_wrong_example_shape_raises():
    g = _mixture(sd.VPSDE())
    for x in [jnp.zeros(2), jnp.zeros((4, 3))]:
        with pytest.raises(ValueError, match="shape"):
            g.log_prob(0.5, x)
        with pytest.raises(ValueError, match="shape"):
            g.score(0.5, x)
