"""Superposition operators (docs/math.md §5) against the equations they solve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


def _random_inputs(seed, num_models, dim=5, h=0.02):
    """Scores, this step's noise g dW (of size sqrt(h)) and h = g^2 dtau."""
    rng = np.random.default_rng(seed)
    scores = jnp.asarray(rng.normal(size=(num_models, dim)) * 2.0)
    noise = jnp.asarray(rng.normal(size=dim) * np.sqrt(h))
    return scores, noise, h


def _weights(op, log_q, scores, noise, h):
    """The operator's weights for one example with these step quantities."""
    inputs = sd.OperatorInputs(
        jnp.asarray(0.5), jnp.zeros(scores.shape[1:]), scores, log_q, noise,
        jnp.asarray(h),
    )  # fmt: skip
    return op(inputs)


def _ito_increments(scores, noise, h, kappa):
    """The parts of d log q^i that differ between models: v_i + h (K kappa)_i with
    K_ij = <s_i, s_j> and v_i = <g dW, s_i> - (h/2)|s_i|^2 (`And` docstring)."""
    gram = scores @ scores.T
    v = scores @ noise - 0.5 * h * jnp.sum(scores**2, axis=1)
    return v + h * gram @ kappa


@pytest.mark.parametrize("seed", range(5))
def test_and_weights_general_matches_two_model_closed_form(seed):
    scores, noise, h = _random_inputs(seed, 2)
    general = sd.and_weights(scores, noise, h)
    closed = sd.and_weights_two(scores, noise, h)
    np.testing.assert_allclose(general, closed, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(general), 1.0, rtol=1e-12)


@pytest.mark.parametrize("num_models", [2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_and_weights_equalise_ito_increments(num_models, seed):
    scores, noise, h = _random_inputs(seed, num_models)
    kappa = sd.and_weights(scores, noise, h)
    np.testing.assert_allclose(jnp.sum(kappa), 1.0, rtol=1e-12)
    inc = _ito_increments(scores, noise, h, kappa)
    scale = float(jnp.max(jnp.abs(inc))) + 1.0
    np.testing.assert_allclose(inc - inc[0], 0.0, atol=1e-10 * scale)
    # The operator gives the same weights (no clipping by default).
    np.testing.assert_allclose(
        _weights(sd.And(), jnp.zeros(num_models), scores, noise, h), kappa, rtol=1e-12
    )


def test_and_weights_equalise_the_estimator_increments():
    # End to end with the Itô estimator (Eq. 90): take the step the sampler takes,
    # dx = (-f x + g^2 sum_i kappa_i s_i) dtau + g dW, and evaluate every model's
    # Delta log q^i. AND must make them all equal (the common d f dtau included).
    scores, noise, _ = _random_inputs(7, 3, dim=4)
    x = jnp.asarray(np.random.default_rng(8).normal(size=4))
    f, g2, dtau = -3.0, 6.0, 1e-3
    h = g2 * dtau
    kappa = _weights(sd.And(), jnp.zeros(3), scores, noise, h)
    dx = (-f * x + g2 * kappa @ scores) * dtau + noise
    est = sd.ItoEstimator()
    inc = jnp.stack([est.increment(x, dx, s, f, g2, dtau) for s in scores])
    np.testing.assert_allclose(inc, inc[0], rtol=1e-9, atol=1e-12)
    # Without AND (uniform weights) they differ: the check above has teeth.
    dx_avg = (-f * x + g2 * jnp.mean(scores, 0)) * dtau + noise
    inc_avg = jnp.stack([est.increment(x, dx_avg, s, f, g2, dtau) for s in scores])
    assert jnp.max(inc_avg) - jnp.min(inc_avg) > 1e-3


@pytest.mark.parametrize("num_models", [2, 3])
def test_and_weights_degenerate_points_are_uniform(num_models):
    _, noise, h = _random_inputs(0, num_models)
    same = jnp.broadcast_to(jnp.array([0.3, -1.0, 2.0, 0.5, 0.1]), (num_models, 5))
    for scores in [same, jnp.zeros((num_models, 5))]:
        kappa = sd.and_weights(scores, noise, h)
        assert jnp.all(jnp.isfinite(kappa))
        np.testing.assert_allclose(kappa, 1.0 / num_models, rtol=1e-12)
        np.testing.assert_allclose(
            _weights(sd.And(max_weight=5.0), jnp.zeros(num_models), scores, noise, h),
            1.0 / num_models,
            rtol=1e-12,
        )


def test_and_weights_partly_degenerate():
    # Two of three scores coincide: the system is singular in one direction only.
    # Whatever the split between the coinciding models, the step and the
    # increments are the same; they must still be equal across models.
    scores, noise, h = _random_inputs(3, 3)
    scores = scores.at[2].set(scores[1])
    kappa = sd.and_weights(scores, noise, h)
    assert jnp.all(jnp.isfinite(kappa))
    np.testing.assert_allclose(jnp.sum(kappa), 1.0, rtol=1e-12)
    np.testing.assert_allclose(kappa[1], kappa[2], rtol=1e-9)
    inc = _ito_increments(scores, noise, h, kappa)
    np.testing.assert_allclose(
        inc - inc[0], 0.0, atol=1e-10 * (1 + float(jnp.max(jnp.abs(inc))))
    )


def test_and_weights_are_differentiable_at_degenerate_points():
    # The pseudo-inverse must not produce NaN gradients where it drops directions.
    _, noise, h = _random_inputs(0, 2)
    loss = lambda s: jnp.sum(sd.and_weights(s, noise, h) ** 2)
    grad = jax.jit(jax.grad(loss))(jnp.zeros((2, 5)))
    assert jnp.all(jnp.isfinite(grad))


@pytest.mark.parametrize("max_weight", [1.0, 2.0, 10.0])
def test_and_max_weight_bounds_and_keeps_sum(max_weight):
    for seed in range(5):
        # Nearly equal scores: the unbounded weights are huge.
        scores, noise, h = _random_inputs(seed, 3)
        scores = scores[0] + 1e-3 * scores
        free = sd.and_weights(scores, noise, h)
        assert jnp.max(jnp.abs(free)) > max_weight
        kappa = _weights(sd.And(max_weight=max_weight), jnp.zeros(3), scores, noise, h)
        assert jnp.max(jnp.abs(kappa)) <= max_weight * (1 + 1e-12)
        np.testing.assert_allclose(jnp.sum(kappa), 1.0, rtol=1e-12)
        # Scaled towards uniform along the same direction, not distorted.
        dev, free_dev = kappa - 1 / 3, free - 1 / 3
        np.testing.assert_allclose(
            dev / jnp.linalg.norm(dev), free_dev / jnp.linalg.norm(free_dev), rtol=1e-9
        )


def test_and_max_weight_leaves_small_weights_alone():
    scores, noise, h = _random_inputs(1, 3, h=1.0)
    free = sd.and_weights(scores, noise, h)
    bound = float(jnp.max(jnp.abs(free))) + 1.0
    kappa = _weights(sd.And(max_weight=bound), jnp.zeros(3), scores, noise, h)
    np.testing.assert_allclose(kappa, free, rtol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda: sd.And(max_weight=0.5), lambda: sd.And(rtol=-1.0)]
)
def test_and_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("temperature", [1.0, 0.3, 100.0])
def test_or_weights_are_softmax(temperature):
    log_q = jnp.array([-3.0, -1.5, -2.2])
    bias = np.log([0.2, 0.3, 0.5])
    scores = jnp.ones((3, 4))
    noise = jnp.zeros(4)
    for op, logits in [
        (sd.Or(temperature=temperature), temperature * np.asarray(log_q)),
        (
            sd.Or(temperature=temperature, bias=bias),
            temperature * np.asarray(log_q) + bias,
        ),
    ]:
        expected = np.exp(logits - logits.max())
        expected /= expected.sum()
        np.testing.assert_allclose(
            _weights(op, log_q, scores, noise, 0.01), expected, rtol=1e-12
        )


def test_or_is_shift_invariant_and_stable():
    # Only differences of log q matter (docs/math.md §5), even for huge values.
    scores, noise = jnp.ones((2, 3)), jnp.zeros(3)
    op = sd.Or(temperature=2.0)
    a = _weights(op, jnp.array([-1.0, 0.5]), scores, noise, 0.01)
    b = _weights(op, jnp.array([-1e4 - 1.0, -1e4 + 0.5]), scores, noise, 0.01)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a, jax.nn.softmax(jnp.array([-2.0, 1.0])), rtol=1e-12)


@pytest.mark.parametrize("temperature", [1e3, 1e6, 1e9])
def test_or_large_temperature_in_float32_under_jit(temperature):
    # Image models' log-densities are thousands of nats (log N(x; 0, I) is about
    # -4360 in d = 3072), so T log q is ~4e9 at T = 1e6: beyond float32's integer
    # resolution. The weights must still be the softmax's limit, under `jit` too
    # (where XLA fuses the scaling into the max subtraction).
    scores, noise = jnp.ones((3, 4), jnp.float32), jnp.zeros(4, jnp.float32)
    weigh = jax.jit(lambda op, lq: _weights(op, lq, scores, noise, 0.01))
    tied = jnp.full((3,), -4375.944, jnp.float32)
    np.testing.assert_allclose(weigh(sd.Or(temperature), tied), np.full(3, 1 / 3))
    apart = jnp.array([-4375.9, -4376.0, -4380.0], jnp.float32)
    np.testing.assert_allclose(weigh(sd.Or(temperature), apart), [1.0, 0.0, 0.0])
    biased = sd.Or(temperature, bias=(-math.inf, 0.0, 0.0))
    np.testing.assert_allclose(weigh(biased, apart), [0.0, 1.0, 0.0])


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_or_nonpositive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        sd.Or(temperature=temperature)


def test_single_and_average():
    scores, noise = jnp.ones((3, 2)), jnp.zeros(2)
    log_q = jnp.array([0.0, -5.0, 3.0])
    np.testing.assert_array_equal(
        _weights(sd.Single(), log_q, scores, noise, 0.1), [1, 0, 0]
    )
    np.testing.assert_array_equal(
        _weights(sd.Single(2), log_q, scores, noise, 0.1), [0, 0, 1]
    )
    np.testing.assert_allclose(
        _weights(sd.Average(), log_q, scores, noise, 0.1), [1 / 3] * 3
    )
    np.testing.assert_allclose(
        _weights(sd.Average(weights=(0.2, 0.5, 0.3)), log_q, scores, noise, 0.1),
        [0.2, 0.5, 0.3],
    )
    assert not sd.Single.needs_density and not sd.Average.needs_density
    assert sd.Or.needs_density and sd.And.needs_density
    with pytest.raises(ValueError, match="sum to one"):
        sd.Average(weights=(0.5, 0.6))


@pytest.mark.parametrize(
    "op, num_models",
    [
        (sd.Single(index=2), 2),
        (sd.Single(index=-1), 2),
        (sd.Average(weights=(0.5, 0.5)), 3),
        (sd.Or(bias=(0.0, 0.0, 0.0)), 2),
        (sd.And(), 1),
    ],
)
def test_check_rejects_wrong_model_counts(op, num_models):
    with pytest.raises(ValueError):
        op.check(num_models)


@pytest.mark.parametrize(
    "op, num_models",
    [
        (sd.Single(index=1), 2),
        (sd.Average(weights=(0.5, 0.5)), 2),
        (sd.Or(bias=(0.0, 0.0)), 2),
        (sd.And(), 2),
        (sd.And(), 5),
    ],
)
def test_check_accepts_right_model_counts(op, num_models):
    op.check(num_models)


def test_and_noise_directions_span_the_score_differences():
    from superdiff._operator.and_ import and_noise_directions

    scores = jax.random.normal(jax.random.key(5), (3, 6))
    rows = and_noise_directions(scores)
    np.testing.assert_allclose(rows @ rows.T, np.eye(2), atol=1e-10)
    projector = rows.T @ rows
    for i, j in [(0, 1), (1, 2), (0, 2)]:
        diff = scores[i] - scores[j]
        np.testing.assert_allclose(projector @ diff, diff, atol=1e-10)
    same = jnp.stack([scores[0], scores[0]])
    np.testing.assert_array_equal(and_noise_directions(same), np.zeros((1, 6)))
