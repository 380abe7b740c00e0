"""The public samplers under `jax.jit` and `jax.vmap` give the plain calls' numbers,
and report failures the Diffrax way (a result code, or an error at run time)."""

from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


SDE = sd.VPSDE()
LEFT = sd.GaussianMixture(np.array([[-1.5, 0.0]]), np.array([0.25]), SDE)
RIGHT = sd.GaussianMixture(np.array([[1.5, 0.0]]), np.array([0.25]), SDE)
KEYS = jax.random.split(jax.random.key(3), 3)


def _or(key):
    return sd.sample(
        [LEFT.score, RIGHT.score], SDE, sd.Or(), key=key, num_samples=32,
        shape=(2,), num_steps=40,
    )  # fmt: skip


def _ode(key):
    return sd.sample_ode(
        LEFT.score, SDE, key=key, num_samples=16, shape=(2,), num_steps=20,
        solver=dfx.Heun(),
    )  # fmt: skip


def _log_prob(x):
    return sd.log_prob_ode(LEFT.score, SDE, x, num_steps=20, solver=dfx.Heun())


def _guided(key):
    return sd.sample_density_guided(
        LEFT.score, SDE, sd.DensityQuantile(0.6), key=key, num_samples=8,
        shape=(2,), num_steps=10, spacing="log_snr", track_density=True,
    )  # fmt: skip


def _stochastic(key):
    return sd.sample_density_guided(
        LEFT.score, SDE, sd.DensityQuantile(0.6), key=key, num_samples=8,
        shape=(2,), num_steps=10, noise=0.5, track_density=True,
    )  # fmt: skip


def _high_density(key):
    return sd.sample_high_density(
        LEFT.score, SDE, log_snr_switch=0.0, key=key, num_samples=8, shape=(2,),
        num_steps=10,
    )  # fmt: skip


def _prior_guided(key):
    return sd.sample_prior_guided(
        LEFT.score, SDE, 0.3, key=key, num_samples=8, shape=(2,), num_steps=10
    )


def _alignment(key):
    x = jax.random.normal(key, (4, 2))
    return sd.score_alignment(LEFT.score, SDE, x, num_steps=10)


def _with_density(key):
    x = jax.random.normal(key, (4, 2))
    return sd.sample_ode_with_density(
        LEFT.score, SDE, x, divergence=sd.Hutchinson(2), key=key, num_steps=10
    )


def _close(a, b):
    # jit fuses the operations differently, so the last bits may differ (measured
    # at most 5e-10 here, on the density-guided flow); vmap gives identical numbers.
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-8, atol=1e-8)


SAMPLERS = [_or, _ode, _guided, _stochastic, _high_density, _prior_guided]
SAMPLERS += [_alignment, _with_density]


@pytest.mark.parametrize("fn", SAMPLERS, ids=lambda f: f.__name__.strip("_"))
def test_jit_and_vmap_over_keys_equal_plain_calls(fn):
    plain = [fn(k) for k in KEYS]
    _close(jax.jit(fn)(KEYS[0]), plain[0])
    batched = jax.vmap(fn)(KEYS)
    for i, out in enumerate(plain):
        _close(jax.tree.map(lambda a, i=i: a[i], batched), out)
        assert out.result == sd.RESULTS.successful


def test_log_prob_ode_under_jit_and_vmap():
    xs = jax.random.normal(jax.random.key(4), (3, 8, 2))
    plain = [_log_prob(x) for x in xs]
    _close(jax.jit(_log_prob)(xs[0]), plain[0])
    batched = jax.vmap(_log_prob)(xs)
    for i, out in enumerate(plain):
        assert out.log_q is not None and out.log_q.shape == (8, 1)
        _close(jax.tree.map(lambda a, i=i: a[i], batched), out)


def _late_nan(t, x):
    return jnp.where(t < 0.5, jnp.nan, 1.0) * LEFT.score(t, x)


def test_failures_are_result_codes_or_runtime_errors():
    kwargs: dict[str, Any] = dict(num_samples=8, shape=(2,), num_steps=10)
    out = sd.sample(_late_nan, SDE, key=KEYS[0], throw=False, **kwargs)
    assert out.result == sd.RESULTS.non_finite
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        sd.sample(_late_nan, SDE, key=KEYS[0], **kwargs)
    # ... under jax.jit too (where it arrives as JAX's runtime error), since nothing
    # is pulled to the host mid-function.
    with pytest.raises(jax.errors.JaxRuntimeError, match="NaN or inf"):
        jax.jit(lambda k: sd.sample(_late_nan, SDE, key=k, **kwargs).x)(KEYS[0])
    # The early check names the model, under vmap as well.
    nan = lambda t, x: jnp.full_like(x, jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"Score model\(s\) \[0, 1\]"):
        jax.vmap(lambda k: sd.sample([nan, nan], SDE, sd.Or(), key=k, **kwargs).x)(KEYS)


def test_a_misspelt_solve_option_is_refused():
    # Pyright flags the typo; at run time it must not be ignored either.
    options: dict[str, Any] = {"num_step": 3}
    with pytest.raises(TypeError, match=r"\['num_step'\]"):
        sd.sample_ode(
            LEFT.score, SDE, key=KEYS[0], num_samples=4, shape=(2,), **options
        )


def test_running_out_of_steps_is_a_result_code():
    out = sd.sample_ode(
        LEFT.score, SDE, key=KEYS[0], num_samples=4, shape=(2,), max_steps=3,
        throw=False,
    )  # fmt: skip
    assert out.result == sd.RESULTS.max_steps_reached
