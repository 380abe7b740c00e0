"""The UNet: shapes, gradients, batching, dropout, conditioning, validation and a
short training run. Small configurations keep it fast on a CPU."""

import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import superdiff as sd
from superdiff.nn._conv import channels_last_conv


# Compiling, not running, is what these tests spend their time on, so they (1) draw
# keys from the "rbg" generator, which XLA compiles several times faster on a CPU
# than threefry (keys are drawn in initialisation and dropout); (2) compile at XLA's
# lowest optimisation level, which halves the compile time of a UNet (but slows the
# code it makes, so training uses level 1); (3) share one small network and a few
# compiled functions.
_key = functools.partial(jax.random.key, impl="rbg")


def _fast_jit(fn: Callable, level: int = 0) -> Callable:
    """`eqx.filter_jit` (for functions returning arrays) at XLA optimisation `level`."""
    jitted = jax.jit(
        lambda dynamic, static: fn(*eqx.combine(dynamic, static)),
        static_argnums=1,
        compiler_options={"xla_backend_optimization_level": level},
    )
    return lambda *args: jitted(*eqx.partition(args, eqx.is_array))


def _tiny(image_shape=(8, 8, 2), **kwargs) -> sd.nn.UNet:
    config: dict[str, Any] = dict(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        dropout=0.5,
        num_groups=2,
        num_heads=2,
    )
    config.update(kwargs)
    return sd.nn.UNet(image_shape, **config, key=_key(0))


@pytest.fixture(scope="module")
def unet() -> sd.nn.UNet:
    return _tiny()


_single = _fast_jit(lambda model, t, x, key: model(t, x, key=key))
_batched = _fast_jit(lambda model, t, x: jax.vmap(model)(t, x))


def _image(shape, seed=1):
    return jax.random.normal(_key(seed), shape)


@pytest.mark.parametrize(
    "image_shape, channel_mults, attention",
    [((28, 28, 1), (1, 2, 2), (7,)), ((32, 32, 3), (1, 2, 2, 2), (16,))],
)
def test_output_has_the_input_shape(image_shape, channel_mults, attention):
    # The presets' image shapes and depths with few channels, so that it runs fast.
    unet = _tiny(
        image_shape, channel_mults=channel_mults, attention_resolutions=attention
    )
    x = _image(image_shape)
    eps = _single(unet, jnp.asarray(0.5), x, None)
    assert eps.shape == image_shape and bool(jnp.all(jnp.isfinite(eps)))
    score = eqx.filter_eval_shape(sd.EpsilonScore(unet, sd.VPSDE()), 0.5, x)
    assert score.shape == image_shape


@pytest.mark.parametrize(
    "preset, image_shape, num_params",
    [
        (sd.nn.UNet.mnist, (28, 28, 1), 686_513),
        # Skreta et al.'s network: DDPM's with attention at 16 and 8.
        (sd.nn.UNet.cifar10, (32, 32, 3), 37_061_891),
        # DDPM's own (attention at 16 only): 35.7M parameters in Ho et al. 2020.
        (
            functools.partial(sd.nn.UNet.cifar10, attention_resolutions=(16,)),
            (32, 32, 3),
            35_744_771,
        ),
        (sd.nn.UNet.cifar10_small, (32, 32, 3), 1_575_267),
    ],
)
def test_presets_by_shape_only(preset, image_shape, num_params):
    # `filter_eval_shape` traces initialisation and the call without computing.
    unet = eqx.filter_eval_shape(preset, key=jax.random.key(0))
    params = [leaf for leaf in jax.tree.leaves(unet) if hasattr(leaf, "shape")]
    assert sum(math.prod(p.shape) for p in params) == num_params
    x = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    out = eqx.filter_eval_shape(lambda m, x: m(0.5, x), unet, x)
    assert out.shape == image_shape and out.dtype == jnp.float32
    keyed = eqx.filter_eval_shape(
        lambda m, x: m(0.5, x, key=jax.random.key(1)), unet, x
    )
    assert keyed.shape == image_shape


def test_cifar10_is_the_papers_configuration():
    unet = eqx.filter_eval_shape(sd.nn.UNet.cifar10, key=jax.random.key(0))
    assert unet.base_channels == 128 and unet.channel_mults == (1, 2, 2, 2)
    assert unet.num_res_blocks == 2 and unet.dropout == 0.1
    assert unet.attention_resolutions == (16, 8)
    # Attention after every residual block at 16×16 and 8×8, none at 32 or 4.
    down = [[a is not None for a in level.attentions] for level in unet.down]
    up = [[a is not None for a in level.attentions] for level in unet.up]
    assert down == [[False] * 2, [True] * 2, [True] * 2, [False] * 2]
    assert up == [[False] * 3, [True] * 3, [True] * 3, [False] * 3]
    small = eqx.filter_eval_shape(sd.nn.UNet.cifar10_small, key=jax.random.key(0))
    assert small.attention_resolutions == (16, 8) and small.channel_mults == (
        1, 2, 2, 2,
    )  # fmt: skip


def test_every_parameter_gets_a_finite_nonzero_gradient(unet):
    x = _image((2, 8, 8, 2))
    target = _image((2, 8, 8, 2), seed=2)
    t = jnp.array([0.3, 0.7])

    @_fast_jit
    @eqx.filter_grad
    def grad(model):
        return jnp.sum((jax.vmap(model)(t, x) - target) ** 2)

    leaves = jax.tree.leaves_with_path(eqx.filter(grad(unet), eqx.is_inexact_array))
    assert len(leaves) == len(jax.tree.leaves(eqx.filter(unet, eqx.is_inexact_array)))
    for path, g in leaves:
        name = jax.tree_util.keystr(path)
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert float(jnp.max(jnp.abs(g))) > 0, name


def test_vmap_equals_per_example_calls(unet):
    x = _image((3, 8, 8, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    batched = _batched(unet, t, x)
    for i in range(3):
        # float64 throughout; only the order of summation can differ.
        np.testing.assert_allclose(
            batched[i], _single(unet, t[i], x[i], None), rtol=1e-10, atol=1e-12
        )


def test_dropout_only_with_a_key(unet):
    x = _image((8, 8, 2))
    t = jnp.asarray(0.5)
    k1, k2 = _key(3), _key(4)
    plain = _single(unet, t, x, None)
    np.testing.assert_array_equal(plain, _single(unet, t, x, None))
    np.testing.assert_array_equal(_single(unet, t, x, k1), _single(unet, t, x, k1))
    assert not np.allclose(_single(unet, t, x, k1), plain)
    assert not np.allclose(_single(unet, t, x, k1), _single(unet, t, x, k2))


def test_dsm_loss_gives_each_example_its_own_dropout_mask(unet):
    # Two identical examples with the same t and noise: without dropout their
    # losses agree; with `dropout=True` each gets its own key, hence its own mask.
    sde = sd.VPSDE()
    x0 = _image((8, 8, 2))
    key = jax.random.key(5)  # threefry: its bits do not change under vmap (rbg's do)
    jitted = _fast_jit(
        lambda model, x0, k, dropout: sd.train.dsm_loss(
            model, sde, x0, key=k, dropout=dropout
        )
    )
    loss = lambda dropout, k: jitted(unet, x0, k, dropout)
    assert float(loss(False, key)) == float(loss(False, key))
    assert float(loss(True, key)) == float(loss(True, key))
    assert float(loss(True, key)) != float(loss(False, key))
    # batch_dsm_loss splits the key per example: two copies of one example with
    # dropout differ from each other only through their keys.
    keys = jax.random.split(key, 2)
    per_example = [float(loss(True, k)) for k in keys]
    assert per_example[0] != per_example[1]
    batch = _fast_jit(
        lambda model, x, k: sd.train.batch_dsm_loss(model, sde, x, key=k, dropout=True)
    )(unet, jnp.stack([x0, x0]), key)
    np.testing.assert_allclose(float(batch), np.mean(per_example), rtol=1e-5)


def test_time_conditioning_changes_the_output(unet):
    x = jnp.broadcast_to(_image((8, 8, 2)), (3, 8, 8, 2))
    out = _batched(unet, jnp.array([0.1, 0.5, 0.9]), x)
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])


def test_attention_is_used_at_the_chosen_resolution(unet):
    # Resolution 4 (attention) is the second level down and the first level up.
    assert all(a is None for a in unet.down[0].attentions + unet.up[1].attentions)
    assert all(a is not None for a in unet.down[1].attentions + unet.up[0].attentions)
    x = _image((1, 8, 8, 2))
    t = jnp.array([0.5])
    attention = unet.down[1].attentions[0]
    assert attention is not None
    perturbed = eqx.tree_at(
        lambda m: m.down[1].attentions[0].attention.value_proj.weight,
        unet,
        attention.attention.value_proj.weight + 0.1,
    )
    assert not np.allclose(_batched(perturbed, t, x), _batched(unet, t, x))


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=1, use_bias=False),
        dict(kernel_size=3, padding=2, dilation=2, groups=2),
    ],
)
def test_channels_last_conv_equals_the_equinox_conv(conv_kwargs):
    # The UNet and the classifier compute their convolutions channels-last (fast
    # inside a sampler's loop on XLA:CPU) from `eqx.nn.Conv2d` parameters.
    conv = eqx.nn.Conv2d(4, 6, **conv_kwargs, key=_key(0))
    x = _image((4, 10, 10))
    expected = conv(x)
    got = channels_last_conv(conv, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_conv_rejects_other_padding_modes():
    conv = eqx.nn.Conv2d(2, 2, 3, padding=1, padding_mode="REFLECT", key=_key(0))
    with pytest.raises(ValueError, match="zero-padded.*'REFLECT'"):
        channels_last_conv(conv, _image((2, 8, 8)))


@pytest.mark.parametrize(
    "x_shape", [(8, 8), (2, 8, 8, 2), (2, 8, 8), (8, 8, 3), (16, 16, 2)]
)
def test_bad_input_shapes_are_rejected(unet, x_shape):
    with pytest.raises(ValueError, match=r"\(H, W, C\) = \(8, 8, 2\).*got shape"):
        unet(0.5, jnp.zeros(x_shape))


def test_non_scalar_time_is_rejected(unet):
    with pytest.raises(ValueError, match="scalar time"):
        unet(jnp.array([0.5]), jnp.zeros((8, 8, 2)))


@pytest.mark.parametrize(
    "image_shape, kwargs, message",
    [
        ((28, 28, 1), dict(channel_mults=(1, 2, 2, 2)), r"28x28.*\(1, 2, 2, 2\).*7x7"),
        ((30, 30, 1), dict(channel_mults=(1, 2, 2)), r"30x30.*15x15"),
        ((28, 28, 1), dict(attention_resolutions=(16,)), r"16.*\[28, 14\]"),
        ((8, 8, 2), dict(num_groups=3), "num_groups"),
        ((8, 8, 2), dict(num_heads=3), "num_heads"),
        ((8, 8, 2), dict(dropout=1.0), "dropout"),
        ((8, 8, 2), dict(base_channels=7), "base_channels"),
        ((8, 8, 2), dict(channel_mults=()), "channel_mults"),
        ((8, 8, 2), dict(num_res_blocks=0), "num_res_blocks"),
        ((8, 8), dict(), "image_shape"),
    ],
)
def test_bad_configurations_are_rejected(image_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(image_shape, **kwargs)


def test_training_lowers_the_loss():
    # Two fixed 8×8 patterns, so the ε-prediction loss has a low floor: 50 Adam steps
    # take a fresh network (one resolution, to compile quickly) from its initial
    # loss of about 1 to well below half of it. Means over 5 and 10 steps of 32
    # examples each keep the comparison clear of the noise in t and ε.
    sde = sd.VPSDE()
    stripes = jnp.tile(jnp.array([1.0, -1.0]), (8, 4))[..., None]
    data = jnp.repeat(jnp.stack([stripes, -stripes]), 16, axis=0)
    model = _tiny((8, 8, 1), channel_mults=(1,), attention_resolutions=(), dropout=0.1)
    optimizer = sd.train.make_optimizer(3e-3, warmup_steps=5)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    def loss_fn(params, key):
        # Dropout on, as in real training: every example its own key.
        network = eqx.combine(params, static)
        return sd.train.batch_dsm_loss(network, sde, data, key=key, dropout=True)

    @functools.partial(_fast_jit, level=1)
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(50):
        params, opt_state, loss = step(params, opt_state, _key(i))
        losses.append(float(loss))
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert last < 0.5 * first, losses
