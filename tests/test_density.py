"""PF-ODE log-densities, divergence estimators, metrics and toy data."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


@pytest.fixture
def mixture():
    sde = sd.VPSDE(t_min=1e-5)
    means = jnp.array([[-1.0, 0.0], [1.0, 1.0]])
    return sd.GaussianMixture(means, jnp.array([0.2, 0.1]), sde)


def test_pf_ode_exact_divergence_matches_exact_log_density(mixture):
    sde = mixture.sde
    x = mixture.sample(100, key=jax.random.key(0))
    log_p, _ = sd.log_prob_ode(mixture.score, sde, x)
    exact = jax.vmap(lambda v: mixture.log_prob(sde.t_min, v))(x)
    # Solver tolerance is 1e-5; the remaining error is the prior's mismatch with
    # the true q_1 (α_1 ≈ 0.0066 shifts the means by < 0.01): below 0.02 nats.
    np.testing.assert_allclose(log_p, exact, atol=0.02)


def test_pf_ode_sampling_tracks_the_density(mixture):
    sde = mixture.sde
    x1 = jax.random.normal(jax.random.key(1), (100, 2))
    x, log_q = sd.sample_ode_with_density(mixture.score, sde, x1, solver=dfx.Dopri5())
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
    same, shifted = sd.energy_distance(x, y), sd.energy_distance(x, z)
    # Between N(0,I) and N((1,0),I) the population value is about 0.47; between two
    # samples of the same law it is O(1/n).
    assert float(same) < 0.02
    assert 0.35 < float(shifted) < 0.6
    with pytest.raises(ValueError, match="batches of points"):
        sd.energy_distance(x, jnp.zeros((3, 3)))


def test_two_moons_and_nearest_share():
    key = jax.random.split(jax.random.key(0), 3)
    upper = sd.two_moons(500, key=key[0], moon="upper")
    lower = sd.two_moons(500, key=key[1], moon="lower")
    both = sd.two_moons(4000, key=key[2])
    assert upper.shape == (500, 2)
    assert float(sd.nearest_share(upper, upper, lower)) > 0.99
    assert float(sd.nearest_share(lower, upper, lower)) < 0.01
    share = float(sd.nearest_share(both, upper, lower))
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 4000) + 0.01
    with pytest.raises(ValueError, match="moon"):
        sd.two_moons(10, key=key[0], moon="left")
