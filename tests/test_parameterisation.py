"""Parameterisations (docs/math.md (1.8), (1.10)) against closed forms."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


SDE = sd.VPSDE()
MEAN, VAR = np.array([0.8, -1.7, 0.2]), 0.3
DATA = sd.GaussianMixture(MEAN[None], np.array([VAR]), SDE)


def exact_eps(t, x):
    """The noise prediction that is exact for DATA: -σ_t ∇log q_t."""
    return -SDE.sigma(t) * DATA.score(t, x)


def tweedie(t, x):
    """E[x₀ | x_t = x] for x₀ ~ N(MEAN, VAR I), in closed form."""
    a, s = SDE.alpha(t), SDE.sigma(t)
    return MEAN + a * VAR / (a**2 * VAR + s**2) * (x - a * MEAN)


@pytest.mark.parametrize("t", [0.02, 0.3, 0.9])
def test_clipped_score_is_the_score_of_the_clipped_tweedie_estimate(t):
    # (1.10): the clean estimate implied by the clipped score, (x + σ² s̃)/α, is
    # the clipped posterior mean, and (1.8) where no coordinate is clipped.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3)) * 1.5)
    plain = jax.vmap(lambda xi: sd.EpsilonScore(exact_eps, SDE)(t, xi))(x)
    np.testing.assert_allclose(plain, jax.vmap(lambda xi: DATA.score(t, xi))(x))
    score = sd.EpsilonScore(exact_eps, SDE, clip_x0=(-1.0, 1.0))
    clipped = jax.vmap(lambda xi: score(t, xi))(x)
    a, s = SDE.alpha(t), SDE.sigma(t)
    x0 = jax.vmap(lambda xi: tweedie(t, xi))(x)
    np.testing.assert_allclose((x + s**2 * clipped) / a, np.clip(x0, -1, 1), atol=1e-9)
    inside = np.abs(x0) <= 1
    assert 0 < inside.sum() < inside.size  # both cases occur
    # Bit for bit the plain score in every coordinate that is not clipped.
    np.testing.assert_array_equal(clipped[inside], plain[inside])


def test_clip_x0_stacks_samples_and_keeps_samples_in_range():
    # Two clipped models form one family and sample under jit, and a model
    # whose data lie mostly outside [-1, 1] is held to the box (up to the last
    # step's noise), while the plain one is not.
    nets = [
        sd.EpsilonScore(exact_eps, SDE, clip_x0=(-1.0, 1.0)),
        sd.EpsilonScore(exact_eps, SDE, clip_x0=(-1.0, 1.0)),
    ]
    kwargs: dict[str, Any] = dict(
        key=jax.random.key(0), num_samples=2000, shape=(3,), num_steps=200
    )
    plain = sd.sample(sd.EpsilonScore(exact_eps, SDE), SDE, **kwargs).x
    out = eqx.filter_jit(lambda m: sd.sample(m, SDE, sd.Or(), **kwargs))(nets)
    assert out.log_q is not None and bool(jnp.isfinite(out.log_q).all())
    # Coordinate 1's data are N(-1.7, 0.3): unclipped, 90 % of its samples are below
    # -1; clipped, none is beyond 5 standard deviations of the last step's noise,
    # sqrt(g² dτ) at t_min on 200 steps uniform in t (0.033).
    assert float(jnp.mean(plain[:, 1])) == pytest.approx(-1.7, abs=0.05)
    assert float(jnp.mean(plain[:, 1] < -1)) > 0.85
    dtau = (SDE.t_max - SDE.t_min) / 200
    last = math.sqrt(float(SDE.diffusion_squared(SDE.t_min + dtau)) * dtau)
    assert float(jnp.max(jnp.abs(out.x))) < 1 + 5 * last


@pytest.mark.parametrize(
    "bad",
    [(1.0, -1.0), (0.0, 0.0), (-np.inf, 1.0), (0.0, np.nan), (1.0,), (0, 1, 2), 1.0],
)
def test_bad_clip_x0_raises(bad):
    with pytest.raises(ValueError, match=r"`clip_x0` must be `\(low, high\)`"):
        sd.EpsilonScore(exact_eps, SDE, clip_x0=bad)
