"""The Gaussian-path SDEs against their definitions (docs/math.md §1)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import superdiff as sd


SDES = [
    sd.VPSDE(),
    sd.VPSDE(beta_min=0.5, beta_max=5.0, t_min=1e-2, t_max=0.9),
    sd.SubVPSDE(),
    sd.VESDE(),
    sd.VESDE(sigma_min=0.1, sigma_max=3.0, t_min=1e-3),
]
IDS = ["vp", "vp-custom", "subvp", "ve", "ve-custom"]


def _times(sde, num=7):
    return np.linspace(sde.t_min, sde.t_max, num)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_closed_forms_match_autodiff_derivation(sde):
    # The subclasses override f_t and g_t^2 with the closed forms of Song et al.;
    # the base class derives them from (alpha_t, sigma_t) by autodiff (Prop. 2).
    # Both are exact, so they agree to float64 round-off.
    for t in _times(sde):
        np.testing.assert_allclose(
            sde.drift_coef(t), sd.AbstractSDE.drift_coef(sde, t), rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(
            sde.diffusion_squared(t),
            sd.AbstractSDE.diffusion_squared(sde, t),
            rtol=1e-10,
        )


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_coefficients_reproduce_the_marginals(sde):
    # Independently of autodiff: for x_t = alpha_t x_0 + sigma_t eps to solve
    # dx = f x dt + g dW we need d(alpha)/dt = f alpha and d(sigma^2)/dt =
    # 2 f sigma^2 + g^2. Central differences with step 1e-5 are accurate to
    # ~1e-9 relative (O(h^2) truncation, O(eps/h) round-off).
    eps = 1e-5
    for t in _times(sde)[1:-1]:
        dalpha = (sde.alpha(t + eps) - sde.alpha(t - eps)) / (2 * eps)
        dvar = (sde.sigma(t + eps) ** 2 - sde.sigma(t - eps) ** 2) / (2 * eps)
        f, g2 = sde.drift_coef(t), sde.diffusion_squared(t)
        np.testing.assert_allclose(dalpha, f * sde.alpha(t), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(dvar, 2 * f * sde.sigma(t) ** 2 + g2, rtol=1e-7)


def test_table_of_schedules():
    # docs/math.md §1, written out by hand.
    t = 0.37
    vp, subvp, ve = sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()
    big_b = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    beta = 0.1 + (20.0 - 0.1) * t
    alpha = math.exp(-0.5 * big_b)
    np.testing.assert_allclose(vp.alpha(t), alpha, rtol=1e-12)
    np.testing.assert_allclose(vp.sigma(t), math.sqrt(1 - alpha**2), rtol=1e-12)
    np.testing.assert_allclose(vp.drift_coef(t), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(vp.diffusion_squared(t), beta, rtol=1e-12)
    np.testing.assert_allclose(subvp.sigma(t), 1 - alpha**2, rtol=1e-12)
    np.testing.assert_allclose(
        subvp.diffusion_squared(t), beta * (1 - alpha**4), rtol=1e-12
    )
    sigma = 0.01 * (50.0 / 0.01) ** t
    np.testing.assert_allclose(ve.alpha(t), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ve.sigma(t), sigma, rtol=1e-12)
    np.testing.assert_allclose(
        ve.diffusion_squared(t), 2 * math.log(50.0 / 0.01) * sigma**2, rtol=1e-12
    )


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_marginal_sample_moments(sde):
    n = 4000
    t = 0.5 * (sde.t_min + sde.t_max)
    x0 = jnp.array([1.5, -0.7, 0.0])
    keys = jax.random.split(jax.random.key(0), n)
    x = jax.vmap(lambda k: sde.marginal_sample(t, x0, key=k))(keys)
    mean, std = sde.alpha(t) * x0, sde.sigma(t)
    # Standard errors of n Gaussian samples: std/sqrt(n) for the mean and
    # std/sqrt(2n) for the standard deviation; allow 4 of them.
    np.testing.assert_allclose(x.mean(0), mean, atol=4 * std / math.sqrt(n))
    np.testing.assert_allclose(x.std(0), std, atol=4 * std / math.sqrt(2 * n))
    m, s = sde.marginal(t, x0)
    np.testing.assert_allclose(m, mean, rtol=1e-12)
    np.testing.assert_allclose(s, std, rtol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior(sde):
    x = jnp.array([0.3, -1.2, 2.5, 0.0])
    std = float(sde.sigma(sde.t_max))
    expected = scipy.stats.norm.logpdf(np.asarray(x), loc=0.0, scale=std).sum()
    np.testing.assert_allclose(sde.prior_log_prob(x), expected, rtol=1e-12)
    n = 4000
    samples = sde.prior_sample((n, 2), key=jax.random.key(1))
    assert samples.shape == (n, 2)
    np.testing.assert_allclose(samples.std(0), std, rtol=4 / math.sqrt(2 * n))
    # Below the schedule's t_max: the starting noise of a shorter solve.
    half = float(sde.sigma(0.5))
    lower = scipy.stats.norm.logpdf(np.asarray(x), loc=0.0, scale=half).sum()
    np.testing.assert_allclose(sde.prior_log_prob(x, 0.5), lower, rtol=1e-12)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_snr(sde):
    ts = _times(sde)
    lam = jax.vmap(sde.log_snr)(ts)
    direct = np.log(jax.vmap(sde.alpha)(ts) ** 2 / jax.vmap(sde.sigma)(ts) ** 2)
    np.testing.assert_allclose(lam, direct, rtol=1e-10, atol=1e-10)
    # The signal-to-noise ratio falls as the data is noised.
    assert np.all(np.diff(lam) < 0)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_time_at_log_snr_inverts_log_snr(sde):
    ts = _times(sde, 11)
    lam = jax.vmap(sde.log_snr)(ts)
    np.testing.assert_allclose(sde.time_at_log_snr(lam), ts, rtol=1e-9, atol=1e-12)
    # VP closed form: B(t) = softplus(-lambda), a quadratic in t.
    if type(sde) is sd.VPSDE:
        b = np.log1p(np.exp(-np.asarray(lam)))
        slope = sde.beta_max - sde.beta_min
        closed = (-sde.beta_min + np.sqrt(sde.beta_min**2 + 2 * slope * b)) / slope
        np.testing.assert_allclose(sde.time_at_log_snr(lam), closed, rtol=1e-9)
    # Out of range: the nearer end.
    assert float(sde.time_at_log_snr(sde.log_snr(sde.t_max) - 5.0)) == pytest.approx(
        sde.t_max
    )


def test_vp_log_snr_sigmoid():
    # For VP, alpha^2 = sigmoid(lambda) and sigma^2 = sigmoid(-lambda) (docs/math.md §1).
    sde = sd.VPSDE()
    for t in _times(sde):
        lam = sde.log_snr(t)
        np.testing.assert_allclose(sde.alpha(t) ** 2, jax.nn.sigmoid(lam), rtol=1e-10)
        np.testing.assert_allclose(sde.sigma(t) ** 2, jax.nn.sigmoid(-lam), rtol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: sd.VPSDE(beta_min=0.0),
        lambda: sd.VPSDE(beta_max=-1.0),
        lambda: sd.VPSDE(t_min=0.0),
        lambda: sd.VPSDE(t_min=0.5, t_max=0.5),
        lambda: sd.VPSDE(t_min=0.8, t_max=0.2),
        lambda: sd.SubVPSDE(beta_min=-0.1),
        lambda: sd.SubVPSDE(t_max=-1.0),
        lambda: sd.VESDE(sigma_min=0.0),
        lambda: sd.VESDE(sigma_min=10.0, sigma_max=1.0),
        lambda: sd.VESDE(sigma_max=-5.0),
        lambda: sd.VESDE(t_min=-1e-5),
    ],
)
def test_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_check_time(sde):
    sde.check_time(sde.t_min)
    sde.check_time(sde.t_max)
    sde.check_time(0.5 * (sde.t_min + sde.t_max))
    for bad in [0.0, sde.t_min / 2, sde.t_max + 1e-3, 2.0, -1.0]:
        with pytest.raises(ValueError, match="t_min, t_max"):
            sde.check_time(bad, "t")


def test_ve_schedule_works_with_traced_fields():
    # A mixture (which holds its SDE) passed through `jit` traces the SDE's fields.
    sde = sd.VESDE()
    g = sd.GaussianMixture(jnp.zeros((1, 2)), jnp.array([0.5]), sde)
    t = jnp.asarray(0.3)
    expected = g.log_prob(t, jnp.ones(2))
    traced = jax.jit(lambda g: g.log_prob(t, jnp.ones(2)))(g)
    assert jnp.allclose(traced, expected, rtol=1e-6)
    assert jnp.allclose(jax.jit(lambda s: s.sigma(t))(sde), sde.sigma(t), rtol=1e-6)
