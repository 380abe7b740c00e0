"""The evaluation classifier and the metrics built on its outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import superdiff as sd


def _tiny(key=0, **kwargs):
    return sd.nn.Classifier(
        (8, 8, 1), num_classes=3, channels=(4, 8, 8), hidden=16,
        key=jax.random.key(key), **kwargs,
    )  # fmt: skip


def test_classifier_shapes_and_errors():
    model = _tiny()
    x = jnp.zeros((8, 8, 1))
    assert model(x).shape == (3,)
    assert model.features(x).shape == (16,)
    with pytest.raises(ValueError, match=r"\(8, 8, 1\).*got shape \(2, 8, 8, 1\)"):
        model(jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="divisible by 4"):
        sd.nn.Classifier((6, 6, 1), key=jax.random.key(0))
    with pytest.raises(ValueError, match="dropout"):
        sd.nn.Classifier(dropout=1.0, key=jax.random.key(0))


def test_dropout_only_with_a_key():
    model = _tiny(dropout=0.5)
    x = jax.random.normal(jax.random.key(1), (8, 8, 1))
    assert jnp.array_equal(model(x), model(x))
    assert not jnp.allclose(model(x), model(x, key=jax.random.key(2)))


def test_classifier_learns_a_separable_task():
    # Smoke test of the training path (`fit` with `classifier_loss` on
    # `image_batches`): class k lights up the k-th third of the image rows.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    images = rng.integers(0, 60, (300, 8, 8, 1))
    for k in range(3):
        images[labels == k, 3 * k : 3 * k + 2] += 180
    source = sd.data.ImageArrays(images.astype(np.uint8), labels)
    model = _tiny()
    optimizer = sd.train.make_optimizer(3e-3, warmup_steps=10)
    state = sd.train.init_train_state(model, optimizer)
    batches = iter(sd.data.image_batches(source, 32, seed=0))
    state, history = sd.train.fit(
        state,
        batches,
        sd.train.classifier_loss,
        optimizer,
        60,
        log_every=20,
        progress=False,
    )
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    scaled = images.astype(np.float32) / 127.5 - 1
    logits, features = sd.metrics.classify(state.model, scaled, batch_size=64)
    assert logits.shape == (300, 3) and features.shape == (300, 16)
    assert np.mean(np.argmax(logits, 1) == labels) > 0.95


def test_classify_in_padded_chunks_equals_one_batch():
    model = _tiny()
    x = jax.random.normal(jax.random.key(3), (10, 8, 8, 1))
    logits, features = sd.metrics.classify(
        model, x, batch_size=4
    )  # chunks 4, 4, 2 (+2 pad)
    np.testing.assert_allclose(logits, jax.vmap(model)(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features, jax.vmap(model.features)(x), rtol=1e-6)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    y = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4)) + 1.0
    # Reference: the formula with the (non-symmetric) matrix square root of the
    # covariance product, computed independently by SciPy.
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = np.real(np.asarray(scipy.linalg.sqrtm(cx @ cy)))
    ref = np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * root)
    np.testing.assert_allclose(sd.metrics.frechet_distance(x, y), ref, rtol=1e-8)
    np.testing.assert_allclose(sd.metrics.frechet_distance(y, x), ref, rtol=1e-8)
    assert abs(sd.metrics.frechet_distance(x, x)) < 1e-9
    # Commuting (diagonal) covariances: |Δμ|² + Σ (σ_x - σ_y)². The points are
    # whitened so that their sample mean is 0 and sample covariance exactly I.
    a = np.diag([1.0, 4.0])
    z = rng.normal(size=(1000, 2))
    z = z - z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    fd = sd.metrics.frechet_distance(
        z @ np.sqrt(a), z @ np.sqrt(4 * a) + np.array([3.0, 0])
    )
    np.testing.assert_allclose(fd, 9 + (1 - 2) ** 2 + (2 - 4) ** 2, rtol=1e-6)


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match=r"\(n, f\) and \(m, f\); got \(3, 2\) and"):
        sd.metrics.frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        sd.metrics.frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))


def test_class_histogram_and_confident_share():
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.1], [0, 5.0, 0]])
    np.testing.assert_array_equal(sd.metrics.class_histogram(logits), [0.25, 0.5, 0.25])
    # softmax top probabilities: e^5/(e^5+2) = 0.9867 three times; ~0.35 once.
    assert sd.metrics.confident_share(logits, 0.9) == 0.75
    assert sd.metrics.confident_share(logits, 0.99) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        sd.metrics.confident_share(logits, 1.0)
    with pytest.raises(ValueError, match=r"\(n, classes\)"):
        sd.metrics.class_histogram(np.zeros(3))
