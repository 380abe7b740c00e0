"""Data parallelism on several devices: simulated CPU devices, in subprocesses.

The device count of a JAX process is fixed when JAX first starts its CPU backend,
and this test process has done so already (with one device), so each check runs in
a fresh Python with `XLA_FLAGS=--xla_force_host_platform_device_count=N` and
reports its measurements as JSON; the assertions are made here.

Float32 throughout (the subprocesses do not enable float64). Sharded and
single-device runs sum the batch in different orders (each device sums its part,
then an all-reduce adds the parts), so they agree to float32 rounding, not bit for
bit: the tolerance is 1e-5 of each array's largest entry, about 100 ulps, which a
sum over 64 examples of terms of either sign stays well within.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import superdiff as sd


RTOL = 1e-5

_PRELUDE = """
import json, os
import jax, jax.numpy as jnp, numpy as np, equinox as eqx, optax
import superdiff as sd

def max_rel_diff(a, b):
    # The largest |a - b| over each pair of leaves, relative to that leaf's scale.
    la = jax.tree.leaves(eqx.filter(a, eqx.is_inexact_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_inexact_array))
    assert len(la) == len(lb) and la
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.max(np.abs(x)), 1e-30)
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst

def all_replicated(tree):
    return all(
        leaf.sharding.is_fully_replicated and len(leaf.devices()) == len(jax.devices())
        for leaf in jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    )

def shards(x):
    # How many distinct pieces of `x` the devices hold.
    return len({tuple((i.start, i.stop) for i in s.index) for s in x.addressable_shards})

def setup(seed=0):
    sde = sd.VPSDE()
    net = sd.nn.MLP(2, width=32, depth=2, key=jax.random.key(seed))
    optimizer = sd.train.make_optimizer(1e-2, warmup_steps=2)
    state = sd.train.init_train_state(net, optimizer, seed=seed)
    data = sd.data.two_moons(512, key=jax.random.key(1))
    return sde, optimizer, state, data
"""


def _run(script: str, devices: int, tmp_path) -> dict:
    env = dict(os.environ)
    # XLA's lowest optimisation level: these runs spend their time compiling.
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        " --xla_backend_optimization_level=0"
    )
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / f"result_{devices}.json"
    code = (
        _PRELUDE
        + textwrap.dedent(script)
        + (
            f"\nassert len(jax.devices()) == {devices}, jax.devices()"
            f"\nopen({str(out)!r}, 'w').write(json.dumps(result))\n"
        )
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


_FOUR_DEVICES = """
result = {}
sde, optimizer, state, data = setup()
loss_fn = sd.train.dsm_objective(sde)
mesh = sd.train.data_mesh()
batch = np.asarray(data[:64])

# One step, by hand: the batch split 4 ways, the state replicated.
one, loss1 = sd.train.train_step(state, jnp.asarray(batch), loss_fn, optimizer)
sharded_batch = sd.train.shard_batch(batch, mesh)
four, loss4 = sd.train.train_step(
    sd.train.replicate(state, mesh), sharded_batch, loss_fn, optimizer, mesh=mesh
)
result["step_diff"] = max_rel_diff(one, four)
result["step_loss"] = [float(loss1), float(loss4)]
result["batch_shards"] = shards(sharded_batch)
result["step_replicated"] = all_replicated(four)
# The first Adam moment is (1 - b1) g: the gradients themselves, compared.
mu = lambda s: s.opt_state[1][0].mu
result["grad_diff"] = max_rel_diff(mu(one), mu(four))
result["grad_scale"] = max(
    float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(eqx.filter(mu(one), eqx.is_array))
)

# `fit` on 4 devices against `fit` on 1: batches drawn inside the step, 5 steps.
sampler = sd.train.ArraySampler(data, 64)
fit1, _ = sd.train.fit(state, sampler, loss_fn, optimizer, 5, progress=False)
fit4, _ = sd.train.fit(state, sampler, loss_fn, optimizer, 5, progress=False, mesh=mesh)
result["fit_diff"] = max_rel_diff(fit1, fit4)
result["fit_moved"] = max_rel_diff(state.model, fit1.model)
result["fit_replicated"] = all_replicated(fit4)

# `fit` from an iterator of host batches, which `fit` shards.
batches = lambda: (np.asarray(data[i * 64 : (i + 1) * 64]) for i in range(8))
it1, _ = sd.train.fit(state, batches(), loss_fn, optimizer, 3, progress=False)
it4, _ = sd.train.fit(state, batches(), loss_fn, optimizer, 3, progress=False, mesh=mesh)
result["iter_diff"] = max_rel_diff(it1, it4)

# A batch that does not split 4 ways.
try:
    sd.train.shard_batch(batch[:6], mesh)
    result["bad_batch"] = None
except ValueError as err:
    result["bad_batch"] = str(err)
try:
    sd.train.fit(state, sd.train.ArraySampler(data, 30), loss_fn, optimizer, 1,
                 progress=False, mesh=mesh)
    result["bad_sampler"] = None
except ValueError as err:
    result["bad_sampler"] = str(err)

# Sampling: one batched solve with its batch split over the devices, against the
# same call unsharded (same key, so the same starting noise and Brownian path).
key = jax.random.key(3)
nets = [fit1.model, setup(seed=5)[2].model]
for name, args in (("single", (fit1.model, sde)), ("or", (nets, sde, sd.Or()))):
    plain = sd.sample(*args, key=key, num_samples=16, shape=(2,), num_steps=20)
    split = sd.train.sample_sharded(
        sd.sample, *args, key=key, num_samples=16, shape=(2,), num_steps=20,
        mesh=mesh,
    )
    result[f"sample_{name}_diff"] = max_rel_diff(plain.x, split.x)
    result[f"sample_{name}_shards"] = shards(split.x)
    if plain.log_q is not None:
        result[f"sample_{name}_logq_diff"] = max_rel_diff(plain.log_q, split.log_q)
        result[f"sample_{name}_logq_shards"] = shards(split.log_q)
# The solve's loop itself runs split: in the compiled program its state holds 4 of
# the 16 samples per device (not all 16, as when a run-time check gathers them).
from superdiff._sampler.sharded import _sample_constrained
from superdiff._sharding import batch_sharding

for name, args in (("single", (fit1.model, sde)), ("or", (nets, sde, sd.Or()))):
    x = sd.train.sharded_noise(sde, 16, (2,), key=key, mesh=mesh)
    args, kwargs = sd.train.replicate((args, dict(num_steps=20)), mesh)
    compiled = _sample_constrained.lower(
        sd.sample, args, kwargs, x, key, batch_sharding(mesh)
    ).compile()
    carries = [  # the types of each while loop's state
        line.split(" while(")[0]
        for line in compiled.compiled.as_text().splitlines()
        if " while(" in line
    ]
    result[f"loop_{name}"] = [c for c in carries if "f32[" in c]
result["sample_other_key"] = max_rel_diff(
    sd.sample(fit1.model, sde, key=jax.random.key(4), num_samples=16, shape=(2,),
              num_steps=20).x,
    split.x,
)

# A checkpoint of a 4-device run after 3 of 6 steps, and where 6 uninterrupted
# steps on 4 devices end.
ckpt = "four.eqx"
sd.train.fit(state, sampler, loss_fn, optimizer, 3, progress=False, mesh=mesh,
             checkpoint_path=ckpt)
full, _ = sd.train.fit(state, sampler, loss_fn, optimizer, 6, progress=False, mesh=mesh)
np.savez("full.npz", *[np.asarray(x) for x in
                       jax.tree.leaves(eqx.filter(full, eqx.is_inexact_array))])
"""


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> tuple[dict, object]:
    folder = tmp_path_factory.mktemp("four_devices")
    return _run(_FOUR_DEVICES, 4, folder), folder


def test_one_training_step_on_four_devices_equals_one_device(four):
    result, _ = four
    assert result["batch_shards"] == 4
    assert result["step_replicated"]
    loss1, loss4 = result["step_loss"]
    assert loss4 == pytest.approx(loss1, rel=RTOL)
    assert result["grad_scale"] > 0
    assert result["grad_diff"] <= RTOL
    assert result["step_diff"] <= RTOL


def test_fit_on_four_devices_equals_one_device(four):
    result, _ = four
    assert result["fit_moved"] > 1e-3  # the steps changed the model
    assert result["fit_diff"] <= RTOL
    assert result["fit_replicated"]
    assert result["iter_diff"] <= RTOL


def test_a_batch_that_does_not_split_is_refused_naming_both_numbers(four):
    result, _ = four
    for message in (result["bad_batch"], result["bad_sampler"]):
        assert message is not None
        assert "4 devices" in message
    assert "size 6 " in result["bad_batch"]
    assert "size 30 " in result["bad_sampler"]


def test_sharded_sampling_equals_unsharded(four):
    result, _ = four
    assert result["sample_single_shards"] == 4
    assert result["sample_single_diff"] <= RTOL
    assert result["sample_or_shards"] == 4 and result["sample_or_logq_shards"] == 4
    assert result["sample_or_diff"] <= RTOL
    assert result["sample_or_logq_diff"] <= RTOL
    assert result["sample_other_key"] > 0.1  # another key gives other samples
    for name in ("single", "or"):
        loops = result[f"loop_{name}"]  # the solve's (the random bits' hold ints)
        assert any("f32[4,2]" in loop for loop in loops), loops
        assert not any("f32[16,2]" in loop for loop in loops), loops


_RESUME = """
result = {}
sde, optimizer, state, data = setup()
loss_fn = sd.train.dsm_objective(sde)
sampler = sd.train.ArraySampler(data, 64)
full = [np.asarray(v) for v in np.load("full.npz").values()]
import shutil
for name, mesh in (("two", sd.train.data_mesh()), ("one", None)):
    path = f"{name}.eqx"
    shutil.copytree("four.eqx", path)  # a checkpoint folder
    resumed, _ = sd.train.fit(state, sampler, loss_fn, optimizer, 6, progress=False,
                              mesh=mesh, checkpoint_path=path)
    result[f"{name}_step"] = int(resumed.step)
    result[f"{name}_diff"] = max_rel_diff(
        full, jax.tree.leaves(eqx.filter(resumed, eqx.is_inexact_array))
    )
    if mesh is not None:
        result[f"{name}_replicated"] = all_replicated(resumed)
# Not resuming at all would land elsewhere: the check can fail.
fresh, _ = sd.train.fit(state, sampler, loss_fn, optimizer, 3, progress=False)
result["fresh_diff"] = max_rel_diff(
    full, jax.tree.leaves(eqx.filter(fresh, eqx.is_inexact_array))
)
"""


def test_a_four_device_checkpoint_resumes_on_two_and_on_one_device(four):
    _, folder = four
    result = _run(_RESUME, 2, folder)
    assert result["two_step"] == 6 and result["one_step"] == 6
    assert result["two_replicated"]
    assert result["two_diff"] <= RTOL
    assert result["one_diff"] <= RTOL
    assert result["fresh_diff"] > 1e-3


def test_single_device_helpers_in_process():
    # In this process (one device): a one-device mesh shards trivially, and the
    # arguments are checked.
    mesh = sd.train.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == len(jax.devices())
    batch = sd.train.shard_batch({"x": np.ones((3, 2)), "n": 4}, mesh)
    assert batch["n"] == 4 and batch["x"].shape == (3, 2)
    with pytest.raises(ValueError, match="scalar"):
        sd.train.shard_batch(np.float32(1.0), mesh)
    with pytest.raises(ValueError, match="empty"):
        sd.train.data_mesh([])
    with pytest.raises(TypeError, match="AbstractSDE"):
        sd.train.sample_sharded(sd.sample, lambda t, x: -x, key=jax.random.key(0),
                                num_samples=2, shape=(1,))  # fmt: skip
    tree = sd.train.replicate({"w": np.arange(3.0), "name": "w"}, mesh)
    assert tree["name"] == "w" and tree["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(tree["w"], np.arange(3.0))


def test_maybe_initialize_distributed_does_nothing_without_a_launcher(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert sd.train.maybe_initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert sd.train.maybe_initialize_distributed() is False
