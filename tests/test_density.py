"""PF-ODE log-densities, divergence estimators, metrics and toy data."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import superdiff as sd


@pytest.fixture
def mixture():
    sde = sd.VPSDE(t_min=1e-5)
    means = jnp.array([[-1.0, 0.0], [1.0, 1.0]])
    return sd.GaussianMixture(means, jnp.array([0.2, 0.1]), sde)


def test_pf_ode_exact_divergence_matches_exact_log_density(mixture):
    sde = mixture.sde
    x = mixture.sample(100, key=jax.random.key(0))
    out = sd.log_prob_ode(mixture.score, sde, x)
    assert out.log_q is not None and out.x.shape == x.shape
    log_p = out.log_q[:, 0]
    exact = jax.vmap(lambda v: mixture.log_prob(sde.t_min, v))(x)
    # Solver tolerance is 1e-5; the remaining error is the prior's mismatch with
    # the true q_1 (α_1 ≈ 0.0066 shifts the means by < 0.01): below 0.02 nats.
    np.testing.assert_allclose(log_p, exact, atol=0.02)


def test_pf_ode_sampling_tracks_the_density(mixture):
    sde = mixture.sde
    x1 = jax.random.normal(jax.random.key(1), (100, 2))
    out = sd.sample_ode_with_density(mixture.score, sde, x1, solver=dfx.Dopri5())
    assert out.log_q is not None
    x, log_q = out.x, out.log_q[:, 0]
    exact = jax.vmap(lambda v: mixture.log_prob(sde.t_min, v))(x)
    np.testing.assert_allclose(log_q, exact, atol=0.02)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(distribution):
    # ∇·f for f(x) = A x is tr(A); the probe average over many probes converges
    # at rate std/sqrt(p).
    a = jax.random.normal(jax.random.key(0), (5, 5))
    fn = lambda x: a @ x
    x = jnp.ones(5)
    est = sd.Hutchinson(num_probes=20_000, distribution=distribution)
    probes = est.probes((1, 5), key=jax.random.key(1))[0]
    value, div = est(fn, x, probes)
    np.testing.assert_allclose(value, a @ x, rtol=1e-6)
    exact = float(jnp.trace(a))
    # Rademacher variance is 2 Σ_{i≠j} a_ij²-ish; Gaussian adds the diagonal: < 200.
    assert abs(float(div) - exact) < 5 * np.sqrt(200 / 20_000)
    _, exact_div = sd.ExactDivergence()(fn, x, None)
    assert float(exact_div) == pytest.approx(exact, rel=1e-6)


def test_hutchinson_arguments():
    with pytest.raises(ValueError, match="num_probes"):
        sd.Hutchinson(num_probes=0)
    with pytest.raises(ValueError, match="distribution"):
        sd.Hutchinson(distribution="uniform")


def test_energy_distance():
    key = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key[0], (1500, 2))
    y = jax.random.normal(key[1], (1500, 2))
    z = jax.random.normal(key[2], (1500, 2)) + jnp.array([1.0, 0.0])
    same, shifted = sd.metrics.energy_distance(x, y), sd.metrics.energy_distance(x, z)
    # Between N(0,I) and N((1,0),I) the population value is about 0.47; between two
    # samples of the same law it is O(1/n).
    assert float(same) < 0.02
    assert 0.35 < float(shifted) < 0.6
    with pytest.raises(ValueError, match="batches of points"):
        sd.metrics.energy_distance(x, jnp.zeros((3, 3)))


def test_two_moons_and_nearest_share():
    key = jax.random.split(jax.random.key(0), 3)
    upper = sd.data.two_moons(500, key=key[0], moon="upper")
    lower = sd.data.two_moons(500, key=key[1], moon="lower")
    both = sd.data.two_moons(4000, key=key[2])
    assert upper.shape == (500, 2)
    assert float(sd.metrics.nearest_share(upper, upper, lower)) > 0.99
    assert float(sd.metrics.nearest_share(lower, upper, lower)) < 0.01
    share = float(sd.metrics.nearest_share(both, upper, lower))
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 4000) + 0.01
    with pytest.raises(ValueError, match="moon"):
        sd.data.two_moons(10, key=key[0], moon="left")


# ------------------------------------------------------------------- bits/dim


def test_bits_per_dim_offset():
    # log2(256 / (b - a)): the Jacobian of scaling 256 pixel levels to (a, b).
    assert sd.bits_per_dim_offset((-1.0, 1.0)) == pytest.approx(7.0)
    assert sd.bits_per_dim_offset((0.0, 1.0)) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="data_range"):
        sd.bits_per_dim_offset((1.0, -1.0))


def _pixel_images(num, dim, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(num, dim), dtype=np.uint8)


def test_bits_per_dim_is_the_discrete_probability_of_the_pixel_cell():
    # Independent of the constant's derivation: for a model that is smooth on the
    # scale of one pixel, bpd = -log2 P(x) / d, with P(x) the model's probability of
    # the cell x + [0, 1)^d on the pixel scale, from the Gaussian CDF. Model: N(0,
    # 0.25 I) on [-1, 1], i.e. standard deviation s = 64 pixel levels around 128, so
    # the Jensen gap (curvature 1/s² x cell size²) is ~1e-5 bits. Each draw's log p
    # varies over the cell with the gradient g_i = (x_i - 128)/s² per pixel level,
    # i.e. with standard deviation sqrt(sum g_i² / 12); we allow 4 of those over
    # sqrt(draws), plus 0.002 bits for the ODE. Means at 0 make the prior exact up to
    # alpha_1² (1e-4 nats).
    sde = sd.VPSDE(t_min=1e-5)
    dim = 4
    model = sd.GaussianMixture(np.zeros((1, dim)), np.array([0.25]), sde)
    images = _pixel_images(6, dim, seed=1)
    out = sd.bits_per_dim(
        model.score, sde, images, key=jax.random.key(1), num_dequant=4
    )
    alpha, sigma = float(sde.alpha(sde.t_min)), float(sde.sigma(sde.t_min))
    std_pixels = 128 * np.sqrt(alpha**2 * 0.25 + sigma**2)
    cdf = lambda v: scipy.stats.norm.cdf((v - 128.0) / std_pixels)
    log_cell = np.sum(np.log(cdf(images + 1.0) - cdf(images.astype(float))), axis=1)
    grad = (images - 128.0) / std_pixels**2
    spread = np.sqrt(np.sum(grad**2, axis=1) / 12 / 4) / (dim * np.log(2))
    diff = np.abs(np.asarray(out.extras["bpd"]) + log_cell / (dim * np.log(2)))
    assert np.all(diff <= 4 * spread + 0.002), (diff, spread)


def test_bits_per_dim_range_is_only_a_change_of_units():
    # The same model expressed on [0, 1] (means (m + 1)/2, variances v/4) has
    # densities 2^d times larger at the corresponding points, so its bits/dim are the
    # same only if the offsets differ by exactly 1 (8 against 7). Checked on the
    # exact densities at the points bits_per_dim reports (to ~1e-5 relative: the
    # t_min noise is not rescaled), and bits_per_dim against those (< 0.01 bits:
    # the PF-ODE's error, mostly the prior's mismatch, alpha_1 <m, z> ~ 0.01 nats).
    sde = sd.VPSDE(t_min=1e-5)
    means, variances = np.array([[-0.3, 0.2], [0.4, -0.1]]), np.array([0.1, 0.2])
    centred = sd.GaussianMixture(means, variances, sde)
    unit = sd.GaussianMixture((means + 1) / 2, variances / 4, sde)
    images = _pixel_images(6, 2, seed=2)
    key = jax.random.key(2)
    a = sd.bits_per_dim(centred.score, sde, images, key=key, num_dequant=2)
    b = sd.bits_per_dim(
        unit.score, sde, images, key=key, num_dequant=2, data_range=(0.0, 1.0)
    )
    a_bpd, a_draws, a_points = (a.extras[k] for k in ("bpd", "bpd_draws", "points"))
    b_draws, b_points = b.extras["bpd_draws"], b.extras["points"]
    assert a_bpd.shape == (6,) and a_draws.shape == (2, 6)
    assert a_points.shape == (2, 6, 2)
    # Each point lies in its pixel's cell: z = -1 + 2 (x + u) / 256, u in [0, 1).
    cells = np.floor((np.asarray(a_points) + 1) * 128)
    np.testing.assert_array_equal(cells, np.broadcast_to(images, cells.shape))
    np.testing.assert_allclose(b_points, (a_points + 1) / 2, rtol=1e-12)

    def exact_bpd(model, points, offset):
        log_p = jax.vmap(jax.vmap(lambda z: model.log_prob(sde.t_min, z)))(points)
        return -log_p / (2 * np.log(2)) + offset

    exact_a = exact_bpd(centred, a_points, 7.0)
    exact_b = exact_bpd(unit, b_points, 8.0)
    np.testing.assert_allclose(exact_a, exact_b, atol=1e-4)
    np.testing.assert_allclose(a_draws, exact_a, atol=0.01)
    np.testing.assert_allclose(b_draws, exact_b, atol=0.01)
    np.testing.assert_allclose(a_bpd, np.mean(exact_a, axis=0), atol=0.01)


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (np.zeros((2, 3)), {}, TypeError, "integers"),
        (np.full((2, 3), 256), {}, ValueError, r"\[0, 255\]"),
        (np.zeros(3, dtype=np.uint8), {}, ValueError, "batch"),
        (np.zeros((2, 3), np.uint8), {"num_dequant": 0}, ValueError, "num_dequant"),
        (np.zeros((2, 3), np.uint8), {"data_range": (1, 1)}, ValueError, "data_range"),
    ],
)
def test_bits_per_dim_bad_input(images, kwargs, error, match):
    sde = sd.VPSDE()
    model = sd.GaussianMixture(np.zeros((1, 3)), np.array([0.2]), sde)
    with pytest.raises(error, match=match):
        sd.bits_per_dim(model.score, sde, images, key=jax.random.key(0), **kwargs)
