"""Training: the DSM loss, EMA, checkpoints and resumable `fit`."""

import json
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


def _setup(seed=0, width=16):
    sde = sd.VPSDE()
    net = sd.nn.MLP(2, width=width, depth=1, key=jax.random.key(seed))
    optimizer = sd.train.make_optimizer(1e-3, warmup_steps=5)
    state = sd.train.init_train_state(net, optimizer, seed=seed)
    data = sd.data.two_moons(256, key=jax.random.key(1))
    return sde, optimizer, state, sd.train.ArraySampler(data, 32)


def _leaves_equal(a, b) -> bool:
    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def test_dsm_loss_is_minimised_by_the_exact_score():
    # For Gaussian data the exact noise prediction is ε* = -σ_t ∇log q_t; its DSM
    # loss is the irreducible floor, and any perturbation of it adds to the loss.
    sde = sd.VPSDE()
    g = sd.GaussianMixture(jnp.array([[0.5, -0.5]]), jnp.array([0.3]), sde)
    exact = lambda t, x: -sde.sigma(t) * g.score(t, x)
    worse = lambda t, x: exact(t, x) + 0.1
    x0 = g.sample(4000, key=jax.random.key(0))
    key = jax.random.key(1)
    floor = sd.train.batch_dsm_loss(exact, sde, x0, key=key)
    assert float(sd.train.batch_dsm_loss(worse, sde, x0, key=key)) == pytest.approx(
        float(floor) + 0.01, abs=2e-3
    )  # the cross term has zero mean; 0.1² added per dimension
    assert 0 < float(floor) < 1


def test_training_lowers_the_loss():
    sde, optimizer, state, sampler = _setup()
    loss_fn = sd.train.dsm_objective(sde)
    data = sampler.data
    before = float(
        sd.train.batch_dsm_loss(state.model, sde, data, key=jax.random.key(9))
    )
    state, history = sd.train.fit(
        state, sampler, loss_fn, optimizer, 300, log_every=100, progress=False
    )
    after = float(
        sd.train.batch_dsm_loss(state.model, sde, data, key=jax.random.key(9))
    )
    assert int(state.step) == 300 and len(history) == 3
    assert after < 0.8 * before


def test_ema_update():
    a = {"w": jnp.ones(3)}
    b = {"w": jnp.zeros(3)}
    out = sd.train.ema_update(a, b, 0.9)
    np.testing.assert_allclose(out["w"], 0.9)


def test_checkpoint_roundtrip_is_bit_identical(tmp_path):
    sde, optimizer, state, sampler = _setup()
    state, _ = sd.train.fit(
        state, sampler, sd.train.dsm_objective(sde), optimizer, 7, progress=False
    )
    path = tmp_path / "ckpt.eqx"
    sd.train.save_checkpoint(path, state, {"note": "x"})
    fresh = _setup(seed=3)[2]
    loaded, meta = sd.train.load_checkpoint(path, fresh)
    assert meta == {"note": "x"}
    assert _leaves_equal(loaded, state)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_checkpoint_errors(tmp_path):
    _, _, state, _ = _setup()
    with pytest.raises(sd.train.CheckpointError, match="No checkpoint"):
        sd.train.load_checkpoint(tmp_path / "missing.eqx", state)
    sd.train.save_checkpoint(tmp_path / "small.eqx", state)
    other = _setup(width=8)[2]
    with pytest.raises(sd.train.CheckpointError, match="different model config"):
        sd.train.load_checkpoint(tmp_path / "small.eqx", other)


def test_interrupted_training_resumes_to_the_same_state(tmp_path):
    sde, optimizer, state0, sampler = _setup()
    loss_fn = sd.train.dsm_objective(sde)
    straight, _ = sd.train.fit(state0, sampler, loss_fn, optimizer, 40, progress=False)
    path = tmp_path / "run"
    # A run killed after its checkpoint at step 20 (steps after the last checkpoint
    # are lost and redone) ...
    sd.train.fit(
        state0, sampler, loss_fn, optimizer, 20, checkpoint_path=path,
        checkpoint_every=10, progress=False,
    )  # fmt: skip
    # ... and a new process that starts from a fresh state and the checkpoint.
    fresh = _setup()[2]
    resumed, _ = sd.train.fit(
        fresh, sampler, loss_fn, optimizer, 40, checkpoint_path=path, progress=False
    )
    assert int(resumed.step) == 40
    assert _leaves_equal(resumed, straight)


def test_make_optimizer_rejects_bad_learning_rate():
    with pytest.raises(ValueError, match="learning_rate"):
        sd.train.make_optimizer(0.0)


def test_resume_restores_the_data_iterator(tmp_path):
    # A grain pipeline's position is saved with the checkpoint and restored on
    # resume, so the resumed run trains on the same batches as a straight one.
    sde, optimizer, state0, _ = _setup()
    rng = np.random.default_rng(0)
    images = sd.data.ImageArrays(
        rng.integers(0, 256, (64, 1, 2, 1), dtype=np.uint8), np.zeros(64, np.int64)
    )
    flat = lambda model, batch, key: sd.train.batch_dsm_loss(
        model, sde, jnp.reshape(batch, (batch.shape[0], -1)), key=key
    )

    def batches():
        return iter(sd.data.image_batches(images, 16, seed=3, with_labels=False))

    straight, _ = sd.train.fit(state0, batches(), flat, optimizer, 12, progress=False)
    path = tmp_path / "run"
    sd.train.fit(
        state0, batches(), flat, optimizer, 5, checkpoint_path=path, progress=False
    )
    resumed, _ = sd.train.fit(
        _setup()[2], batches(), flat, optimizer, 12, checkpoint_path=path,
        progress=False,
    )  # fmt: skip
    assert _leaves_equal(resumed, straight)


def test_dsm_loss_passes_a_dropout_key_only_when_asked():
    sde = sd.VPSDE()

    def network(t, x, key=None):
        assert key is not None, "no dropout key"
        return jnp.zeros_like(x) + jax.random.uniform(key)

    x0 = jnp.zeros((4, 2))
    loss = sd.train.batch_dsm_loss(
        network, sde, x0, key=jax.random.key(0), dropout=True
    )
    assert jnp.isfinite(loss)
    with pytest.raises(AssertionError, match="no dropout key"):
        sd.train.batch_dsm_loss(network, sde, x0, key=jax.random.key(0))


def test_log_and_callbacks_survive_a_kill(tmp_path):
    # A run killed at step 30 (before its checkpoint there; the last was at 20)
    # logged records past the checkpoint, the last one half-written; the resumed
    # run drops them and logs the same records as an uninterrupted run, and the
    # callback sees the same states.
    sde, optimizer, state0, sampler = _setup()
    loss_fn = sd.train.dsm_objective(sde)
    norm = lambda state: {"ema_norm": float(sum(jnp.sum(w**2) for w in jax.tree.leaves(eqx.filter(state.ema, eqx.is_array))))}  # fmt: skip
    kwargs: dict[str, Any] = dict(
        log_every=5, callback=norm, callback_every=10, progress=False
    )
    straight_log = tmp_path / "straight.jsonl"
    _, history = sd.train.fit(state0, sampler, loss_fn, optimizer, 40, log_path=straight_log, **kwargs)  # fmt: skip

    class Killed(Exception):
        pass

    def kill_at_30(state):
        if int(state.step) == 30:
            raise Killed
        return norm(state)

    path, log = tmp_path / "run", tmp_path / "run.jsonl"
    with pytest.raises(Killed):
        sd.train.fit(
            state0, sampler, loss_fn, optimizer, 40, checkpoint_path=path,
            checkpoint_every=10, log_path=log, progress=False, log_every=5,
            callback=kill_at_30, callback_every=10,
        )  # fmt: skip
    assert max(json.loads(line)["step"] for line in log.read_text().splitlines()) == 30
    with open(log, "a") as f:  # and was killed again while writing a record
        f.write('{"step": 35, "lo')
    sd.train.fit(_setup()[2], sampler, loss_fn, optimizer, 40, checkpoint_path=path, log_path=log, **kwargs)  # fmt: skip
    drop_rate = lambda records: [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]  # fmt: skip
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]
    assert drop_rate(read(log)) == drop_rate(read(straight_log)) == drop_rate(history)
    assert [r["step"] for r in history if "ema_norm" in r] == [10, 20, 30, 40]


def test_fit_rejects_bad_intervals():
    sde, optimizer, state0, sampler = _setup()
    with pytest.raises(ValueError, match="`log_every` must be positive; got 0"):
        sd.train.fit(
            state0, sampler, sd.train.dsm_objective(sde), optimizer, 5, log_every=0
        )
    with pytest.raises(ValueError, match="callback_every"):
        sd.train.fit(
            state0, sampler, sd.train.dsm_objective(sde), optimizer, 5, callback=print
        )
